"""The Clientmodul's offer to the MTA (clientmodul/send.py ``transmit``, digest §1.4 step 11)
against a scripted MTA on a real TLS socket: with PIPELINING (RFC 2920) MAIL, every RCPT and
DATA go in one write (issue 13: one round trip instead of 2 + recipients), each reply is still
matched to its command, a refused recipient is reported and the rest get the message."""

from __future__ import annotations

import io
import ssl
from functools import partial
from pathlib import Path

import trio
from selfsigned import tls_contexts

from kim_appliance.clientmodul import send
from kim_appliance.protocols.smtp import SmtpClient

BODY = b"Subject: KOM-LE-Nachricht\r\n\r\n.dot line\r\n"
ALICE, BOB, NOBODY = (
    "alice@a.kim.telematik-test",
    "bob@a.kim.telematik-test",
    "x@b.kim.telematik-test",
)


class Mta:
    """Answers EHLO with PIPELINING, then reads every command up to DATA before it answers any:
    a client that waits for the reply to MAIL before sending RCPT would hang here."""

    def __init__(self, rcpt_codes: dict[str, int]) -> None:
        self.rcpt_codes = rcpt_codes
        self.commands: list[str] = []
        self.body = b""

    async def serve(self, server_ctx: ssl.SSLContext, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        buf = b""

        async def line() -> bytes:
            nonlocal buf
            while b"\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    raise EOFError
                buf += data
            first, _, buf = buf.partition(b"\r\n")
            return first

        try:
            await stream.send_all(b"220 mta ESMTP\r\n")
            await line()  # EHLO
            await stream.send_all(b"250-mta\r\n250-PIPELINING\r\n250 SIZE 100000000\r\n")
            while True:
                group = []
                while not group or group[-1] not in ("DATA", "RSET", "QUIT"):
                    group.append((await line()).decode())
                self.commands += group
                answers = []
                accepted = 0
                for command in group:
                    if command.startswith("MAIL"):
                        answers.append(b"250 2.1.0 ok")
                    elif command.startswith("RCPT"):
                        address = command.split("<", 1)[1].rstrip(">")
                        code = self.rcpt_codes.get(address, 250)
                        accepted += code == 250
                        answers.append(f"{code} 5.1.1 rcpt {address}".encode())
                    elif command == "DATA":
                        answers.append(b"354 go" if accepted else b"554 5.5.1 no valid recipients")
                    else:
                        answers.append(b"250 2.0.0 reset" if command == "RSET" else b"221 bye")
                await stream.send_all(b"".join(a + b"\r\n" for a in answers))
                if group[-1] == "QUIT":
                    return
                if group[-1] == "DATA" and accepted:
                    while (got := await line()) != b".":
                        self.body += got + b"\r\n"
                    await stream.send_all(b"250 2.0.0 queued as 1\r\n")
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _transmit(tmp_path: Path, mta: Mta, recipients: list[str]) -> send.Transmitted:
    server_ctx, client_ctx = tls_contexts(tmp_path)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(mta.serve, server_ctx), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_ctx, server_hostname="localhost")
        upstream = send.Upstream(stream, SmtpClient(hostname="cm"), timeout=5)
        with trio.fail_after(10):
            await stream.do_handshake()
            assert (await upstream.reply()).code == 220
            assert (await upstream.command(upstream.client.ehlo())).code == 250
            prepared = send.Prepared(io.BytesIO(BODY), len(BODY), recipients)
            result = await send.transmit(upstream, ALICE, prepared, limiter=trio.CapacityLimiter(1))
            await upstream.quit()
        nursery.cancel_scope.cancel()
    return result


async def test_mail_rcpts_and_data_go_in_one_round_trip(tmp_path: Path) -> None:
    mta = Mta({NOBODY: 550})
    result = await _transmit(tmp_path, mta, [BOB, NOBODY, ALICE])
    assert result.reply.code == 250
    assert [d.address for d in result.refused] == [NOBODY]
    assert mta.commands[:5] == [
        f"MAIL FROM:<{ALICE}> SIZE={len(BODY)}",
        f"RCPT TO:<{BOB}>",
        f"RCPT TO:<{NOBODY}>",
        f"RCPT TO:<{ALICE}>",
        "DATA",
    ]
    assert mta.body == BODY.replace(b"\r\n.dot", b"\r\n..dot")  # dot-stuffed on the wire


async def test_every_recipient_refused_relays_the_refusal_and_resets(tmp_path: Path) -> None:
    """KOM-LE-A_2025 at the MTA: no recipient left -> the MTA's refusal for the PVS, RSET."""
    mta = Mta({BOB: 550, NOBODY: 550})
    result = await _transmit(tmp_path, mta, [BOB, NOBODY])
    assert result.reply.code == 550
    assert [d.address for d in result.refused] == [BOB, NOBODY]
    assert mta.commands[-2:] == ["RSET", "QUIT"]
    assert mta.body == b""

"""The Fachdienst's POP3 side through real POP3S sessions (RFC 1939, digest §3.2): UIDs,
deletion only at QUIT, RSET, TOP, the maildrop lock, octet-exact sizes, and a 5 MB message
through SMTP and back byte for byte."""

from __future__ import annotations

import poplib
import re
import time
from functools import partial

import trio
from fd_support import (
    FD1,
    Running,
    StartAppliance,
    make_message,
    pop3_command,
    pop3_connect,
    pop3_fetch_all,
    smtp_send,
)

WEBER, KLEIN = "praxis.weber", "zahnarzt.klein"


def _addr(app: Running, local: str) -> str:
    return str(app.participant(local)["address"])


async def _deliver(app: Running, count: int, *, body: str = "Hallo\n") -> list[bytes]:
    """``count`` messages from praxis.weber to zahnarzt.klein (one SMTP session each)."""
    weber, klein = _addr(app, WEBER), _addr(app, KLEIN)
    sent = []
    for i in range(count):
        data = make_message(weber, klein, subject=f"Nachricht {i}", body=body)
        await trio.to_thread.run_sync(partial(smtp_send, app, FD1, WEBER, [klein], data))
        sent.append(data)
    return sent


def _uidl(app: Running) -> dict[int, str]:
    pop = pop3_connect(app, FD1, KLEIN)
    try:
        _, lines, _ = pop.uidl()
        return {int(n): uid.decode() for n, uid in (line.split() for line in lines)}
    finally:
        pop.quit()


async def test_uidl_stable_and_never_reused(appliance: Running) -> None:
    """KOM-LE-A_2152 (RFC 1939 §7): a message keeps its UID across sessions, and the UID of a
    deleted message is never given to a new one."""
    await _deliver(appliance, 3)
    first = await trio.to_thread.run_sync(_uidl, appliance)
    assert len(first) == 3
    assert len(set(first.values())) == 3
    assert all(re.fullmatch(r"[!-~]{1,70}", uid) for uid in first.values())  # RFC 1939 §7
    assert await trio.to_thread.run_sync(_uidl, appliance) == first

    def delete_first() -> None:
        pop = pop3_connect(appliance, FD1, KLEIN)
        pop.dele(1)
        pop.quit()

    await trio.to_thread.run_sync(delete_first)
    await _deliver(appliance, 2)
    after = await trio.to_thread.run_sync(_uidl, appliance)
    assert list(after.values())[:2] == [first[2], first[3]]  # survivors keep their UIDs
    new = set(after.values()) - {first[2], first[3]}
    assert len(new) == 2
    assert not new & set(first.values())


async def test_dele_then_quit_removes(appliance: Running) -> None:
    """RFC 1939 §6: DELE marks, QUIT (UPDATE state) removes."""
    await _deliver(appliance, 2)

    def dialogue() -> tuple[bytes, tuple[int, int]]:
        pop = pop3_connect(appliance, FD1, KLEIN)
        pop.dele(1)
        try:
            pop.retr(1)
        except poplib.error_proto as exc:
            refused = exc.args[0]
        else:
            raise AssertionError("RETR of a deleted message succeeded")
        pop.quit()
        again = pop3_connect(appliance, FD1, KLEIN)
        try:
            return refused, again.stat()
        finally:
            again.quit()

    refused, (count, _) = await trio.to_thread.run_sync(dialogue)
    assert refused.startswith(b"-ERR")
    assert count == 1


async def test_dele_without_quit_keeps_the_message(appliance: Running) -> None:
    """RFC 1939 §6: a session that ends without QUIT (connection dropped) deletes nothing."""
    await _deliver(appliance, 2)

    def dialogue() -> tuple[int, int]:
        pop = pop3_connect(appliance, FD1, KLEIN)
        pop.dele(1)
        pop.dele(2)
        pop.close()  # no QUIT
        again = pop3_connect(appliance, FD1, KLEIN)  # waits out the lock of the dropped one
        try:
            return again.stat()
        finally:
            again.quit()

    count, _ = await trio.to_thread.run_sync(dialogue)
    assert count == 2


async def test_rset_undoes_dele(appliance: Running) -> None:
    """RFC 1939 §5: RSET unmarks every message marked deleted in this session."""
    await _deliver(appliance, 2)

    def dialogue() -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        pop = pop3_connect(appliance, FD1, KLEIN)
        pop.dele(1)
        during = pop.stat()
        pop.rset()
        after = pop.stat()
        pop.quit()
        again = pop3_connect(appliance, FD1, KLEIN)
        try:
            return during, after, again.stat()
        finally:
            again.quit()

    during, after, again = await trio.to_thread.run_sync(dialogue)
    assert during[0] == 1
    assert after[0] == 2
    assert again[0] == 2


async def test_top_zero_gives_the_header_only(appliance: Running) -> None:
    """RFC 1939 §7 TOP; KOM-LE-A_2041 (the Clientmodul asks TOP n 0 first): the header and the
    empty line, no body line; TOP n 1 adds exactly the first body line."""
    [data] = await _deliver(appliance, 1, body="erste Zeile\nzweite Zeile\n")

    def dialogue() -> tuple[list[bytes], list[bytes], list[bytes]]:
        pop = pop3_connect(appliance, FD1, KLEIN)
        try:
            return pop.top(1, 0)[1], pop.top(1, 1)[1], pop.retr(1)[1]
        finally:
            pop.quit()

    top0, top1, full = await trio.to_thread.run_sync(dialogue)
    blank = full.index(b"")
    assert top0 == full[: blank + 1]
    assert top1 == full[: blank + 2]
    assert top1[-1] == b"erste Zeile"
    assert b"\r\n".join(full) + b"\r\n" != b"\r\n".join(top0) + b"\r\n"
    assert (b"\r\n".join(full) + b"\r\n").endswith(data)


async def test_second_session_on_the_same_mailbox_is_in_use(appliance: Running) -> None:
    """RFC 1939 §8 / RFC 2449 [IN-USE]: one session per maildrop; the lock ends with QUIT."""

    def dialogue() -> tuple[bytes, bool]:
        first = pop3_connect(appliance, FD1, KLEIN)
        try:
            pop3_connect(appliance, FD1, KLEIN, wait=0)
        except poplib.error_proto as exc:
            answer = exc.args[0]
        else:
            raise AssertionError("a second session on a locked mailbox was let in")
        first.quit()
        pop3_connect(appliance, FD1, KLEIN, wait=0).quit()  # free again after QUIT
        return answer, True

    answer, _ = await trio.to_thread.run_sync(dialogue)
    assert answer.startswith(b"-ERR [IN-USE]")


async def test_stat_and_list_sizes_equal_the_retr_octets(appliance: Running) -> None:
    """RFC 1939 §5 (exact size in octets): STAT and LIST give the bytes RETR returns, also for
    a body with lines that start with a dot (dot-stuffed on the wire, not in the count)."""
    await _deliver(appliance, 1)
    await _deliver(appliance, 1, body=".hidden\n..two dots\n.\nend\n")

    def dialogue() -> tuple[tuple[int, int], dict[int, int], dict[int, int], list[bytes]]:
        pop = pop3_connect(appliance, FD1, KLEIN)
        try:
            stat = pop.stat()
            listing = {int(n): int(s) for n, s in (x.split() for x in pop.list()[1])}
            octets, bodies = {}, []
            for n in listing:
                _, lines, count = pop.retr(n)
                octets[n] = count
                bodies.append(b"\r\n".join(lines) + b"\r\n")
            return stat, listing, octets, bodies
        finally:
            pop.quit()

    stat, listing, octets, bodies = await trio.to_thread.run_sync(dialogue)
    assert listing == octets
    assert listing == {n: len(body) for n, body in enumerate(bodies, 1)}
    assert stat == (2, sum(listing.values()))
    assert b"\r\n.hidden\r\n..two dots\r\n.\r\nend\r\n" in bodies[1]


async def test_malformed_pop3_commands_and_the_session_goes_on(appliance: Running) -> None:
    """RFC 1939 §3: an unknown command or a bad argument gets -ERR; the session goes on."""
    await _deliver(appliance, 1)

    def dialogue() -> list[bytes]:
        pop = pop3_connect(appliance, FD1, KLEIN)
        answers = []
        for command in ("FROB", "RETR x", "RETR 99", "DELE", "TOP 1", "STAT"):
            answers.append(pop3_command(pop, command))
        pop.quit()
        return answers

    answers = await trio.to_thread.run_sync(dialogue)
    assert all(a.startswith(b"-ERR") for a in answers[:-1]), answers
    assert answers[-1].startswith(b"+OK 1 ")


async def test_five_megabytes_through_smtp_and_back_byte_for_byte(appliance: Running) -> None:
    """issue 3: a message comes back through POP3 byte for byte (after Return-Path and
    Received); 5 MB of base64-like lines with dots at line starts."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    head = make_message(weber, klein, subject="gross", body="x\n").split(b"\r\n\r\n")[0]
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0"
    lines = [line if i % 100 else b"." + line[1:] for i in range(5 * 1024 * 1024 // 78)]
    data = head + b"\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    assert len(data) > 5_000_000
    refused = await trio.to_thread.run_sync(lambda: smtp_send(appliance, FD1, WEBER, [klein], data))
    assert refused == {}
    [got] = await trio.to_thread.run_sync(pop3_fetch_all, appliance, FD1, KLEIN)
    assert got.startswith(b"Return-Path: <" + weber.encode() + b">\r\nReceived: ")
    assert got.endswith(data)
    assert len(got) - len(data) < 1024  # only the trace fields were added


async def test_idle_session_closed_without_deleting(start_appliance: StartAppliance) -> None:
    """RFC 1939 §3: an idle session is closed by the server without entering UPDATE, so its
    DELEs are dropped, and the mailbox is free again at once."""
    app = await start_appliance({"session_timeout_seconds": 1})
    await _deliver(app, 1)

    def dialogue() -> tuple[int, int]:
        pop = pop3_connect(app, FD1, KLEIN)
        pop.dele(1)
        time.sleep(1.5)
        try:
            pop.stat()
        except (poplib.error_proto, OSError, EOFError):
            pass
        else:
            raise AssertionError("the idle session was still open")
        finally:
            pop.close()
        again = pop3_connect(app, FD1, KLEIN, wait=0)
        try:
            return again.stat()
        finally:
            again.quit()

    count, _ = await trio.to_thread.run_sync(dialogue)
    assert count == 1

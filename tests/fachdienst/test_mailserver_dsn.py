"""Delivery status notifications through real sessions (RFC 3461/3464, digest §3.2): delivery
confirmations locally and across the relay, bounces for refused and unreachable recipients,
and RET=HDRS."""

from __future__ import annotations

import email
import email.message
import email.policy
import socket
from email.message import EmailMessage

import trio
from fd_support import (
    FD1,
    FD2,
    Running,
    StartAppliance,
    make_message,
    pop3_fetch_all,
    smtp_send,
    wait_for_mail,
)

WEBER, KLEIN, SONNE = "praxis.weber", "zahnarzt.klein", "apotheke.sonne"
BODY_MARK = "Geheimer-Befundtext-7f3a"


def _addr(app: Running, local: str) -> str:
    return str(app.participant(local)["address"])


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _status_fields(report: EmailMessage) -> list[dict[str, str]]:
    """The per-message and per-recipient field groups of the message/delivery-status part."""
    part = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    groups: list[dict[str, str]] = []
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    for block in blocks:
        assert isinstance(block, email.message.Message)
        # RFC 3464: "rfc822;addr" and "rfc822; addr" are the same; compare without blanks
        groups.append({k.lower(): "".join(str(v).split()).lower() for k, v in block.items()})
    return groups


def _assert_report_shape(report: EmailMessage, original: EmailMessage) -> None:
    """RFC 3464 / KOM-LE-A_2130: multipart/report, null-sender style From, In-Reply-To = the
    outer Message-ID, no X-KOM-LE-Version, and the original header only (RET=HDRS)."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["In-Reply-To"] == original["Message-ID"]
    assert report["X-KOM-LE-Version"] is None
    assert str(report["From"]).startswith("Mail Delivery Subsystem <mds@")
    kinds = [p.get_content_type() for p in report.iter_parts()]
    assert kinds[1:] == ["message/delivery-status", "text/rfc822-headers"]


async def test_notify_success_local_gives_a_delivery_report(appliance: Running) -> None:
    """KOM-LE-A_2130/2147: NOTIFY=SUCCESS for a recipient of the same Fachdienst puts a delivery
    report (Action: delivered, Arrival-Date, In-Reply-To = Message-ID: KOM-LE-A_2132) in the
    sender's mailbox; the recipient gets the message."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    data = make_message(weber, klein, body=f"{BODY_MARK}\n")
    await trio.to_thread.run_sync(
        lambda: smtp_send(appliance, FD1, WEBER, [klein], data, rcpt_options=("NOTIFY=SUCCESS",))
    )
    [report_raw] = await wait_for_mail(appliance, FD1, WEBER)
    report = _parse(report_raw)
    _assert_report_shape(report, _parse(data))
    assert report_raw.startswith(b"Return-Path: <>\r\n")
    per_message, per_recipient = _status_fields(report)
    assert per_message["reporting-mta"].endswith(FD1)
    assert "arrival-date" in per_message
    assert per_recipient["action"] == "delivered"
    assert per_recipient["final-recipient"].lower() == f"rfc822;{klein}".lower()
    assert per_recipient["status"].startswith("2.")
    assert BODY_MARK.encode() not in report_raw
    [delivered] = await wait_for_mail(appliance, FD1, KLEIN)
    assert delivered.endswith(data)


async def test_no_notify_no_report(appliance: Running) -> None:
    """RFC 3461 §5.2: without NOTIFY=SUCCESS a successful delivery is not reported."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    data = make_message(weber, klein)
    await trio.to_thread.run_sync(lambda: smtp_send(appliance, FD1, WEBER, [klein], data))
    await wait_for_mail(appliance, FD1, KLEIN)
    # a local report would be in the mailbox before the 250 (delivery.accept writes it)
    assert await trio.to_thread.run_sync(pop3_fetch_all, appliance, FD1, WEBER) == []


async def test_ret_full_still_gives_headers_only(appliance: Running) -> None:
    """digest §3.2: only RET=HDRS may be used; a report never carries the body, even when the
    sender asked RET=FULL; ORCPT comes back as Original-Recipient."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    data = make_message(weber, klein, subject="Arztbrief", body=f"{BODY_MARK}\n")
    await trio.to_thread.run_sync(
        lambda: smtp_send(
            appliance,
            FD1,
            WEBER,
            [klein],
            data,
            mail_options=("RET=FULL", "ENVID=env-4711"),
            rcpt_options=("NOTIFY=SUCCESS", f"ORCPT=rfc822;{klein}"),
        )
    )
    [report_raw] = await wait_for_mail(appliance, FD1, WEBER)
    assert BODY_MARK.encode() not in report_raw
    report = _parse(report_raw)
    headers_part = list(report.iter_parts())[2]
    original_headers = headers_part.get_payload(decode=True)
    assert isinstance(original_headers, bytes)
    assert b"Subject: Arztbrief" in original_headers
    per_message, per_recipient = _status_fields(report)
    assert per_message.get("original-envelope-id") == "env-4711"
    assert per_recipient["original-recipient"].lower() == f"rfc822;{klein}".lower()


async def test_notify_success_across_the_relay(appliance: Running) -> None:
    """KOM-LE-A_2130/2147: the receiving Fachdienst (fd2) confirms the delivery and the report
    travels back over the relay to the fd1 sender."""
    weber, sonne = _addr(appliance, WEBER), _addr(appliance, SONNE)
    data = make_message(weber, sonne, body=f"{BODY_MARK}\n")
    await trio.to_thread.run_sync(
        lambda: smtp_send(
            appliance, FD1, WEBER, [sonne], data, rcpt_options=("NOTIFY=SUCCESS,FAILURE",)
        )
    )
    [delivered] = await wait_for_mail(appliance, FD2, SONNE)
    assert delivered.endswith(data)
    [report_raw] = await wait_for_mail(appliance, FD1, WEBER)
    report = _parse(report_raw)
    _assert_report_shape(report, _parse(data))
    per_message, per_recipient = _status_fields(report)
    assert per_message["reporting-mta"].endswith(FD2)  # the receiving Fachdienst reports
    assert per_recipient["action"] == "delivered"
    assert per_recipient["final-recipient"].lower() == f"rfc822;{sonne}".lower()
    assert BODY_MARK.encode() not in report_raw


async def test_recipient_refused_by_the_other_fachdienst_bounces(appliance: Running) -> None:
    """KOM-LE-A_2131/2132 and RFC 3464: fd1 accepts mail for an fd2 address, fd2 refuses the
    unknown mailbox, and the sender gets a bounce: Action: failed, Status: 5.1.1."""
    weber = _addr(appliance, WEBER)
    nobody = f"niemand@{FD2}"
    data = make_message(weber, nobody, body=f"{BODY_MARK}\n")
    refused = await trio.to_thread.run_sync(
        lambda: smtp_send(appliance, FD1, WEBER, [nobody], data)
    )
    assert refused == {}  # fd1 cannot know fd2's mailboxes
    [bounce_raw] = await wait_for_mail(appliance, FD1, WEBER)
    bounce = _parse(bounce_raw)
    _assert_report_shape(bounce, _parse(data))
    _, per_recipient = _status_fields(bounce)
    assert per_recipient["action"] == "failed"
    assert per_recipient["status"] == "5.1.1"
    assert "niemand@" in per_recipient["final-recipient"]
    assert "550" in per_recipient.get("diagnostic-code", "")
    assert BODY_MARK.encode() not in bounce_raw


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_fachdienst_bounces_after_the_retries(
    start_appliance: StartAppliance,
) -> None:
    """issue 3 relay: a domain whose Fachdienst cannot be reached is retried, and the sender
    gets a bounce (Action: failed) once relay_give_up_seconds have passed."""
    app = await start_appliance(
        {
            "relay_retry_seconds": [1],
            "relay_give_up_seconds": 2,
            "relay_map": {"fd9.kim.telematik-test": f"127.0.0.1:{_closed_port()}"},
        }
    )
    weber = _addr(app, WEBER)
    far = "arzt@fd9.kim.telematik-test"
    data = make_message(weber, far, body=f"{BODY_MARK}\n")
    start = trio.current_time()
    refused = await trio.to_thread.run_sync(lambda: smtp_send(app, FD1, WEBER, [far], data))
    assert refused == {}
    [bounce_raw] = await wait_for_mail(app, FD1, WEBER, timeout=20)
    assert trio.current_time() - start >= 2  # not before the give-up time
    bounce = _parse(bounce_raw)
    _assert_report_shape(bounce, _parse(data))
    _, per_recipient = _status_fields(bounce)
    assert per_recipient["action"] == "failed"
    assert per_recipient["status"].startswith("5.")
    assert "gaveupafter" in per_recipient.get("diagnostic-code", "")
    assert BODY_MARK.encode() not in bounce_raw

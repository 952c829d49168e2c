"""Trace fields the Fachdienst prepends on arrival (RFC 5321 §4.4, digest §2.2)."""

from __future__ import annotations

import email
import email.policy
import email.utils
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kim_appliance.mail.trace import received_header, return_path_header, trace_prefix

WHEN = datetime(2024, 1, 2, 10, 0, 0, tzinfo=timezone(timedelta(hours=1)))
RCPT = "praxis.weber@fd1.kim.telematik-test"

ARGS: dict[str, Any] = {
    "from_host": "cm.praxis.example",
    "from_ip": "192.0.2.10",
    "by_host": "mail.fd1.kim.telematik-test",
    "protocol": "ESMTPSA",
    "recipient": RCPT,
    "queue_id": "4F2A9C",
    "when": WHEN,
    "tls": "TLSv1.3 TLS_AES_256_GCM_SHA384",
}


def received(**changes: Any) -> bytes:
    return received_header(**{**ARGS, **changes})


def test_received_has_the_rfc5321_clauses_in_order() -> None:
    """RFC 5321 §4.4: from (helo + address literal), by, with, id, for; then the date."""
    field = received()
    assert field == (
        b"Received: from cm.praxis.example ([192.0.2.10])\r\n"
        b"\t(using TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n"
        b"\tby mail.fd1.kim.telematik-test (kim-appliance) with ESMTPSA id 4F2A9C\r\n"
        b"\tfor <praxis.weber@fd1.kim.telematik-test>; Tue, 02 Jan 2024 10:00:00 +0100\r\n"
    )
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))


def test_received_parses_with_the_email_package() -> None:
    message = email.message_from_bytes(received() + b"Subject: x\r\n\r\nbody\r\n")
    value = " ".join(message["Received"].split())
    assert value.startswith("from cm.praxis.example ([192.0.2.10])")
    date = email.utils.parsedate_to_datetime(value.rpartition(";")[2].strip())
    assert date == WHEN


def test_received_without_tls_and_with_ipv6() -> None:
    field = received(tls=None, from_ip="2001:db8::1", protocol="ESMTP")
    assert b"(using" not in field
    assert b"([IPv6:2001:db8::1])" in field
    assert b"with ESMTP id" in field


def test_ipv4_mapped_address_is_written_as_ipv4() -> None:
    assert b"([127.0.0.1])" in received(from_ip="::ffff:127.0.0.1")


@pytest.mark.parametrize("helo", ["evil\r\nX-Injected: 1", "bad host", "a" * 300, ""])
def test_a_malformed_helo_name_cannot_inject_header_fields(helo: str) -> None:
    """The client chooses its HELO name; a bad one is written as 'unknown'."""
    field = received(from_host=helo)
    assert field.startswith(b"Received: from unknown ([192.0.2.10])\r\n")
    assert b"X-Injected" not in field


def test_address_literal_helo_is_kept() -> None:
    assert received(from_host="[192.0.2.10]").startswith(b"Received: from [192.0.2.10] (")


def test_tls_comment_is_cleaned() -> None:
    field = received(tls="TLSv1.3 (x)\r\nX-Injected: 1")
    assert b"\t(using TLSv1.3 xX-Injected: 1)\r\n" in field
    assert field.count(b"\r\n") == 4


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"recipient": "a@b>\r\nX: y"}, "recipient"),
        ({"recipient": ""}, "recipient"),
        ({"by_host": "mail fd1"}, "by_host"),
        ({"protocol": "HTTP"}, "protocol"),
        ({"queue_id": "id with space"}, "queue_id"),
        ({"from_ip": "not-an-ip"}, "from_ip"),
        ({"when": datetime(2024, 1, 2, 10, 0)}, "time zone"),
    ],
)
def test_malformed_values_are_refused(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        received(**change)


def test_return_path() -> None:
    """RFC 5321 §4.4: the reverse-path of MAIL FROM, <> for the null sender."""
    assert return_path_header(RCPT) == b"Return-Path: <praxis.weber@fd1.kim.telematik-test>\r\n"
    assert return_path_header("") == b"Return-Path: <>\r\n"
    with pytest.raises(ValueError, match="Return-Path"):
        return_path_header("a@b>\r\nBcc: c@d")


def test_trace_prefix_puts_return_path_first() -> None:
    """RFC 5321 §4.4: final delivery puts Return-Path above the Received fields."""
    prefix = trace_prefix(mail_from="dr.meier@fd2.kim.telematik-test", **ARGS)
    message = email.message_from_bytes(prefix + b"Subject: x\r\n\r\n", policy=email.policy.default)
    assert list(message.keys())[:2] == ["Return-Path", "Received"]
    assert message["Return-Path"] == "<dr.meier@fd2.kim.telematik-test>"
    assert prefix.endswith(b"+0100\r\n")

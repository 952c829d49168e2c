"""The Fachdienst mail server's acceptance rules (digest §3.2, §2.10)."""

from __future__ import annotations

import pytest

from kim_appliance.fachdienst.rules import (
    Refusal,
    check_header_senders,
    check_mail_from,
    check_rcpt,
    check_relay_mail_from,
    check_size,
    is_ti_address,
    same_address,
)
from kim_appliance.mail.headers import HeaderBlock, parse_header_block

WEBER = "praxis.weber@fd1.kim.telematik-test"
MEIER = "dr.meier@fd2.kim.telematik-test"
SCHULZ = "apotheke.schulz@fd1.kim.telematik-test"


def header(text: str) -> HeaderBlock:
    return parse_header_block(text.encode("utf-8"))


# --- is_ti_address -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        WEBER,
        "A.B_c-1@arv.kim.telematik",
        "Praxis.Weber@FD1.KIM.TELEMATIK-TEST",
        '"praxis.weber"@fd1.kim.telematik-test',
    ],
)
def test_ti_addresses_are_recognised(address: str) -> None:
    """KOM-LE-A_2185: addresses in .kim.telematik (PU) and .kim.telematik-test (RU/TU)."""
    assert is_ti_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "praxis.weber@gmail.com",
        "praxis.weber@kim.telematik.example.com",
        "praxis.weber@fd1.kim.telematik-testx",
        "praxis.weber@fd1kim.telematik",
        "praxis weber@fd1.kim.telematik-test",
        '"praxis weber"@fd1.kim.telematik-test',
        "praxis+tag@fd1.kim.telematik-test",
        "fd1.kim.telematik-test",
        "",
        "a" * 65 + "@fd1.kim.telematik-test",
    ],
)
def test_other_addresses_are_not_ti_addresses(address: str) -> None:
    """KOM-LE-A_2185 and digest §2.10 syntax: local part [A-Za-z0-9._-]{1,64}."""
    assert not is_ti_address(address)


def test_addresses_compare_case_insensitively_and_through_needless_quotes() -> None:
    assert same_address("Praxis.Weber@FD1.kim.telematik-test", WEBER)
    assert same_address('"praxis.weber"@fd1.kim.telematik-test', WEBER)
    assert not same_address("praxis.weber2@fd1.kim.telematik-test", WEBER)


# --- MAIL FROM (A_23421, KOM-LE-A_2185) -------------------------------------------------------


def test_mail_from_equal_to_login_is_accepted_in_any_case() -> None:
    """A_23421: MAIL FROM equals the SMTP AUTH username, compared case-insensitively."""
    assert check_mail_from(WEBER, WEBER) is None
    assert check_mail_from("Praxis.Weber@FD1.KIM.telematik-test", WEBER) is None


def test_mail_from_other_than_login_is_refused() -> None:
    """A_23421: a different MAIL FROM is refused with an SMTP error that names both."""
    refusal = check_mail_from(SCHULZ, WEBER)
    assert refusal == Refusal(
        550, "5.7.1", f"MAIL FROM <{SCHULZ}> is not the authenticated account <{WEBER}> (A_23421)"
    )
    assert str(refusal).startswith("550 5.7.1 MAIL FROM")


def test_null_mail_from_of_an_authenticated_client_is_refused() -> None:
    """A_23421: an authenticated Clientmodul may not send with the null sender."""
    refusal = check_mail_from("", WEBER)
    assert refusal is not None
    assert "MAIL FROM <>" in refusal.text


def test_mail_from_outside_the_ti_is_refused() -> None:
    """KOM-LE-A_2185: only mail from inside the TI is processed."""
    refusal = check_mail_from("someone@gmail.com", "someone@gmail.com")
    assert refusal is not None
    assert (refusal.code, refusal.enhanced) == (550, "5.7.1")
    assert "only mail from inside the TI is processed (KOM-LE-A_2185)" in refusal.text


def test_relay_mail_from_accepts_ti_and_null_only() -> None:
    """KOM-LE-A_2185 for mail from other Fachdienste; <> is a DSN and is accepted."""
    assert check_relay_mail_from(MEIER) is None
    assert check_relay_mail_from("") is None
    refusal = check_relay_mail_from("spam@example.com")
    assert refusal is not None
    assert refusal.enhanced == "5.7.1"


# --- RCPT TO ----------------------------------------------------------------------------------

MAILBOXES = {WEBER.lower(): True, SCHULZ.lower(): False}  # address -> active


def rcpt(address: str) -> Refusal | None:
    return check_rcpt(
        address,
        local_domains=["FD1.kim.telematik-test"],
        relay_domains=["fd2.kim.telematik-test"],
        mailbox_exists=lambda a: a.lower() in MAILBOXES,
        mailbox_active=lambda a: MAILBOXES[a.lower()],
    )


def test_rcpt_local_active_mailbox_and_relay_domain_are_accepted() -> None:
    assert rcpt(WEBER) is None
    assert rcpt("PRAXIS.WEBER@fd1.KIM.telematik-test") is None
    assert rcpt(MEIER) is None  # relayed: the other Fachdienst knows its mailboxes


@pytest.mark.parametrize(
    ("address", "enhanced", "words"),
    [
        ("x@gmail.com", "5.7.1", "KOM-LE-A_2185"),
        ("x@fd9.kim.telematik-test", "5.1.2", "domain fd9.kim.telematik-test is not served"),
        ("nobody@fd1.kim.telematik-test", "5.1.1", "no such mailbox"),
        (SCHULZ, "5.2.1", "deregistered and receives no mail (KOM-LE-A_2149)"),
    ],
)
def test_rcpt_refusals(address: str, enhanced: str, words: str) -> None:
    """KOM-LE-A_2185 (outside the TI), unknown domain, unknown mailbox, KOM-LE-A_2149."""
    refusal = rcpt(address)
    assert refusal is not None
    assert (refusal.code, refusal.enhanced) == (550, enhanced)
    assert words in refusal.text
    assert f"<{address}>" in refusal.text


# --- header senders (A_23422) -----------------------------------------------------------------


def senders(text: str, mail_from: str = WEBER, rcpt_to: tuple[str, ...] = (MEIER,)) -> str | None:
    refusal = check_header_senders(header(text), mail_from=mail_from, rcpt_to=list(rcpt_to))
    if refusal is None:
        return None
    assert (refusal.code, refusal.enhanced) == (550, "5.7.1")
    assert "A_23422" in refusal.text
    return refusal.text


@pytest.mark.parametrize(
    "text",
    [
        f"From: {WEBER}\r\n",
        "From: Dr. Weber <Praxis.Weber@FD1.kim.telematik-test>\r\n",
        f'From: "Weber, Dr." <{WEBER}>\r\n',
        f"From: {SCHULZ}, Dr. Weber <{WEBER}>\r\nSender: {WEBER}\r\n",
        f"From: =?utf-8?q?Dr=2E_M=C3=BCller?= <{WEBER}>\r\n",
        f"From: {WEBER}\r\nReply-To: {MEIER}, Team <team@fd1.kim.telematik>\r\n",
        f"From: {WEBER}\r\nSender: <{WEBER.upper()}>\r\n",
        f"From: {WEBER}\r\nReply-To:\r\n",
    ],
)
def test_header_senders_that_match_mail_from_are_accepted(text: str) -> None:
    """A_23422: From holds MAIL FROM (alone or among several); Sender equals it; Reply-To in TI."""
    assert senders(text) is None


def test_from_with_another_single_address_is_refused() -> None:
    """A_23422: exactly one From address that is not MAIL FROM."""
    text = senders(f"From: {SCHULZ}\r\n")
    assert text == (f"From <{SCHULZ}> is not the sender <{WEBER}> of MAIL FROM (A_23422)")


def test_display_name_that_looks_like_mail_from_does_not_count() -> None:
    """A_23422 compares the addr-spec, not the display name."""
    text = senders(f'From: "{WEBER}" <{SCHULZ}>\r\n')
    assert text is not None
    assert f"From <{SCHULZ}>" in text


def test_from_with_several_addresses_without_mail_from_is_refused() -> None:
    """A_23422: several From addresses, none of them MAIL FROM."""
    text = senders(f"From: {SCHULZ}, {MEIER}\r\n")
    assert text is not None
    assert "From names 2 addresses and none is the sender" in text


@pytest.mark.parametrize("text", ["Subject: no From\r\n", "From: undisclosed:;\r\n"])
def test_from_without_address_is_refused(text: str) -> None:
    """A_23422: no address in From."""
    refused = senders(text)
    assert refused is not None
    assert refused.startswith("From holds no address")


def test_second_from_field_is_refused() -> None:
    """A second From field could hide a forged address from the reader (RFC 5322 §3.6)."""
    refused = senders(f"From: {SCHULZ}\r\nFrom: {WEBER}\r\n")
    assert refused is not None
    assert "2 From fields" in refused


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f"From: {WEBER}\r\nSender: {SCHULZ}\r\n", f"Sender <{SCHULZ}> is not the sender"),
        (f"From: {WEBER}\r\nSender: {WEBER}, {SCHULZ}\r\n", "exactly one address"),
        (f"From: {WEBER}\r\nSender: {WEBER}\r\nSender: {WEBER}\r\n", "2 Sender fields"),
    ],
)
def test_sender_other_than_mail_from_is_refused(text: str, words: str) -> None:
    """A_23422: Sender, if present, must equal MAIL FROM."""
    refused = senders(text)
    assert refused is not None
    assert words in refused


@pytest.mark.parametrize(
    "reply_to", ["x@gmail.com", f"{MEIER}, x@kim.telematik.evil.com", "Team <team@telematik>"]
)
def test_reply_to_outside_the_ti_is_refused(reply_to: str) -> None:
    """A_23422: every Reply-To address must end .kim.telematik or .kim.telematik-test."""
    refused = senders(f"From: {WEBER}\r\nReply-To: {reply_to}\r\n")
    assert refused is not None
    assert refused.startswith("Reply-To <")
    assert "is not a KIM address" in refused


def test_mail_to_oneself_is_exempt() -> None:
    """A_23422 (2): exactly one RCPT TO equal to MAIL FROM: not refused (mail to oneself)."""
    bad = f"From: {SCHULZ}\r\nReply-To: x@gmail.com\r\n"
    assert senders(bad, rcpt_to=(WEBER.upper(),)) is None
    # ... but only with exactly one recipient
    assert senders(bad, rcpt_to=(WEBER, MEIER)) is not None


def test_null_sender_skips_the_header_checks() -> None:
    """DSNs of other Fachdienste come with MAIL FROM <> and a From of their own (digest §3.2)."""
    dsn = "From: Mail Delivery Subsystem <mds@fd2.kim.telematik-test>\r\n"
    assert senders(dsn, mail_from="") is None


# --- size -------------------------------------------------------------------------------------


def test_size_within_limits_is_accepted() -> None:
    assert check_size(100, max_message_size=100, quota_remaining=100) is None
    assert check_size(10**9, max_message_size=10**10, quota_remaining=None) is None


def test_size_over_max_mail_size_is_refused() -> None:
    """digest §3.2 limits: maxMailSize; RFC 1870: 552 5.3.4."""
    refusal = check_size(734003201, max_message_size=734003200, quota_remaining=None)
    assert refusal is not None
    assert (refusal.code, refusal.enhanced) == (552, "5.3.4")
    assert "734003201" in refusal.text
    assert "734003200" in refusal.text


def test_size_over_remaining_quota_is_refused_as_mailbox_full() -> None:
    """digest §3.2 limits: quota per account; 552 5.2.2 mailbox full."""
    refusal = check_size(101, max_message_size=1000, quota_remaining=100, mailbox=WEBER)
    assert refusal is not None
    assert (refusal.code, refusal.enhanced) == (552, "5.2.2")
    assert f"mailbox <{WEBER}> full" in refusal.text
    over = check_size(1, max_message_size=1000, quota_remaining=-5)
    assert over is not None
    assert "0 bytes of quota remain" in over.text


def test_refusal_texts_never_carry_line_breaks() -> None:
    """A refusal goes out as one SMTP reply line: header-borne addresses are made printable."""
    refusal = check_mail_from("evil\r\nRCPT@fd1.kim.telematik-test", WEBER)
    assert refusal is not None
    assert "\r" not in refusal.text
    assert "\n" not in refusal.text
    assert "<evil??RCPT@fd1.kim.telematik-test>" in refusal.text


def test_refusal_rejects_a_non_error_code() -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Refusal(250, "2.0.0", "ok")

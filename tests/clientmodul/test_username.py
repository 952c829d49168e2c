"""The Clientmodul username of SMTP and POP3 (digest §1.2; CM-1.13 §3.3.2.2 and §3.4.2.2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kim_appliance.adapters import InProcessKonnektor
from kim_appliance.clientmodul.ports import CallContext, CardType
from kim_appliance.clientmodul.username import (
    CmLogin,
    ContextDefaults,
    UsernameError,
    parse_pop3_username,
    parse_smtp_username,
)
from kim_appliance.demo import initialise
from kim_appliance.konnektor.operations import Konnektor

SPEC_ACCOUNT = "erik.mustermann@hrst_domain.kim.telematik"
SMTP_EXAMPLE = f"{SPEC_ACCOUNT}#hrst_domain.kim.telematik:465#1#KIM#7#Konn_1"
POP3_EXAMPLE = f"{SPEC_ACCOUNT}#hrst_domain.kim.telematik:995#1#KOM_LE#7#*#Konn_1"
ACCOUNT = "praxis.weber@fd1.kim.telematik-test"


def test_smtp_spec_example() -> None:
    """The SMTP example of CM-1.13/ILF-PS parses field by field (KOM-LE-A_2010)."""
    login = parse_smtp_username(SMTP_EXAMPLE)
    assert login == CmLogin(
        account=SPEC_ACCOUNT,
        host="hrst_domain.kim.telematik",
        port=465,
        mandant_id="1",
        client_system_id="KIM",
        workplace_id="7",
        user_id=None,
        konnektor_id="Konn_1",
    )
    assert login.context() == CallContext("1", "KIM", "7", None)


def test_pop3_spec_example_with_placeholder() -> None:
    """The POP3 example skips the UserId with ``*``, names the KonnektorId (KOM-LE-A_21518-02)."""
    login = parse_pop3_username(POP3_EXAMPLE)
    assert (login.host, login.port) == ("hrst_domain.kim.telematik", 995)
    assert (login.mandant_id, login.client_system_id, login.workplace_id) == ("1", "KOM_LE", "7")
    assert login.user_id is None
    assert login.konnektor_id == "Konn_1"


def test_pop3_user_id_for_hba_reaches_the_context() -> None:
    """POP3 index 5 is the UserId an HBA mailbox needs; it goes into the call context."""
    login = parse_pop3_username(f"{ACCOUNT}#fd1.kim.telematik-test:995#M#C#W#dr.meyer")
    assert login.user_id == "dr.meyer"
    assert login.konnektor_id is None
    assert login.context() == CallContext("M", "C", "W", "dr.meyer")


def test_smtp_index_5_is_the_konnektor_not_a_user() -> None:
    """The field orders differ: SMTP index 5 is the KonnektorId (ILF-PS, KOM-LE-A_21519-02)."""
    login = parse_smtp_username(f"{ACCOUNT}#fd1.kim.telematik-test:465#M#C#W#dr.meyer")
    assert login.konnektor_id == "dr.meyer"
    assert login.user_id is None
    assert login.context().user_id is None


def test_minimal_usernames_have_no_optional_fields() -> None:
    for parse in (parse_smtp_username, parse_pop3_username):
        login = parse(f"{ACCOUNT}#127.0.0.1:2465#Mandant1#PVS1#AP1")
        assert (login.host, login.port) == ("127.0.0.1", 2465)
        assert (login.user_id, login.konnektor_id) == (None, None)


def test_account_is_kept_exactly_as_given() -> None:
    """Addresses are never rewritten, only compared case-insensitively (digest §2.10)."""
    login = parse_smtp_username("Praxis.Weber@FD1.kim.telematik-test#h:1#M#C#W")
    assert login.account == "Praxis.Weber@FD1.kim.telematik-test"


@pytest.mark.parametrize("host_port", ["*", ""])
def test_host_port_may_be_left_out(host_port: str) -> None:
    """Since 1.5.4 server and port are optional (DNS-SD, KOM-LE-A_23541)."""
    login = parse_pop3_username(f"{ACCOUNT}#{host_port}#M#C#W#*#K")
    assert (login.host, login.port) == (None, None)
    assert login.konnektor_id == "K"


@pytest.mark.parametrize(
    ("host_port", "host", "port"),
    [
        ("fd1.kim.telematik-test:465", "fd1.kim.telematik-test", 465),
        ("fd1.kim.telematik-test;465", "fd1.kim.telematik-test", 465),
        ("fd1.kim.telematik-test,465", "fd1.kim.telematik-test", 465),
        ("fd1.kim.telematik-test/465", "fd1.kim.telematik-test", 465),
        ("localhost|65535", "localhost", 65535),
        ("[::1]:995", "::1", 995),
        ("10.0.0.1:1", "10.0.0.1", 1),
    ],
)
def test_other_host_port_separators(host_port: str, host: str, port: int) -> None:
    """Other delimiters than ``:`` are allowed while host and port stay distinct (ILF-PS TIP)."""
    login = parse_smtp_username(f"{ACCOUNT}#{host_port}#M#C#W")
    assert (login.host, login.port) == (host, port)


@pytest.mark.parametrize(
    ("username", "field", "reason"),
    [
        ("", "username", "empty"),
        (f"{ACCOUNT}", "host:port", "missing"),
        (f"{ACCOUNT}#h:465#M#C", "WorkplaceId", "missing"),
        (f"{ACCOUNT}#h:465#M", "ClientSystemId", "missing"),
        (f"{ACCOUNT}#h:465#M#C#W#K#U", "username", "7 fields, at most 6"),
        ("#h:465#M#C#W", "account", "empty"),
        ("praxis.weber#h:465#M#C#W", "account", "not a KIM address"),
        ("@fd1.kim.telematik-test#h:465#M#C#W", "account", "not a KIM address"),
        ("praxis weber@fd1.kim.telematik-test#h:465#M#C#W", "account", "local part"),
        (f"{'x' * 65}@fd1.kim.telematik-test#h:465#M#C#W", "account", "1..64"),
        ("praxis.weber@example.org#h:465#M#C#W", "account", "must end in .kim.telematik"),
        ("praxis.weber@fd1..kim.telematik#h:465#M#C#W", "account", "domain"),
        (f"{ACCOUNT}#h#M#C#W", "host:port", "is not <host>:<port>"),
        (f"{ACCOUNT}#h:#M#C#W", "host:port", "port '' is not a number"),
        (f"{ACCOUNT}#h:abc#M#C#W", "host:port", "port 'abc' is not a number"),
        (f"{ACCOUNT}#h:0#M#C#W", "host:port", "outside 1..65535"),
        (f"{ACCOUNT}#h:65536#M#C#W", "host:port", "outside 1..65535"),
        (f"{ACCOUNT}#h:123456#M#C#W", "host:port", "not a number"),
        (f"{ACCOUNT}#h:-1#M#C#W", "host:port", "not a number"),
        (f"{ACCOUNT}#h..x:465#M#C#W", "host:port", "not a host name"),
        (f"{ACCOUNT}#h:465#M##W", "ClientSystemId", "empty but mandatory"),
        (f"{ACCOUNT}#h:465##C#W", "MandantId", "empty but mandatory"),
        (f"{ACCOUNT}#h:465#M#C#", "WorkplaceId", "empty but mandatory"),
        (f"{ACCOUNT}#h:465#*#C#W", "MandantId", "placeholder"),
        (f"{ACCOUNT}#h:465#M A#C#W", "MandantId", "white space"),
        (f"{ACCOUNT}#h:465#M#C\x00#W", "ClientSystemId", "control character"),
        (f"{ACCOUNT}#h:465#M#C#W#K x", "KonnektorId", "white space"),
        (f"{ACCOUNT}#h:465#M#C#W#{'k' * 257}", "KonnektorId", "at most 256"),
        ("x" * 1025, "username", "at most 1024"),
    ],
)
def test_malformed_smtp_usernames_name_the_field(username: str, field: str, reason: str) -> None:
    """Incomplete or malformed usernames are refused naming the field (SMTP 501 5.5.4, §1.3)."""
    with pytest.raises(UsernameError) as info:
        parse_smtp_username(username)
    assert info.value.field == field
    assert reason in str(info.value)
    assert str(info.value).startswith(f"SMTP username: {field}: ")


@pytest.mark.parametrize(
    ("username", "field", "reason"),
    [
        (f"{ACCOUNT}#h:995#M#C#W#U#K#X", "username", "8 fields, at most 7"),
        (f"{ACCOUNT}#h:995#M#C#W##K", "UserId", "write * to skip"),
        (f"{ACCOUNT}#h:995#M#C#W#U\t#K", "UserId", "white space"),
        (f"{ACCOUNT}#h:995#M#C#W#*#K\x7f", "KonnektorId", "control character"),
        (f"{ACCOUNT}#h:995#M#C", "WorkplaceId", "missing"),
    ],
)
def test_malformed_pop3_usernames_name_the_field(username: str, field: str, reason: str) -> None:
    """POP3 answers any of these with -ERR (digest §1.5); the error names the field."""
    with pytest.raises(UsernameError) as info:
        parse_pop3_username(username)
    assert info.value.field == field
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_pop3_trailing_placeholders_and_empty_tail_mean_skipped() -> None:
    """``*`` in the last positions, or a trailing ``#``, means the optional field is absent."""
    for tail in ("#*", "#*#*", "#"):
        login = parse_pop3_username(f"{ACCOUNT}#h:995#M#C#W{tail}")
        assert (login.user_id, login.konnektor_id) == (None, None)


def test_foreign_domain_allowed_only_when_asked() -> None:
    """gematik's sample uses ``@komle.de``; a caller may switch the KIM-domain check off."""
    username = "alice@komle.de#h:995#M#C#W"
    with pytest.raises(UsernameError, match="must end in"):
        parse_pop3_username(username)
    assert parse_pop3_username(username, require_kim_domain=False).account == "alice@komle.de"


def test_non_ascii_ids_are_allowed() -> None:
    """SASL usernames are UTF-8: a Mandant named with an umlaut is fine."""
    login = parse_smtp_username(f"{ACCOUNT}#h:465#Praxis_Müller#PVS#AP")
    assert login.mandant_id == "Praxis_Müller"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("demo") / "data"
    return data_dir, initialise(data_dir)


def test_demo_usernames_parse(demo_data: tuple[Path, dict[str, Any]]) -> None:
    """Every ready-made username of demo.json parses to its participant's account and domain."""
    _, demo = demo_data
    for p in demo["participants"]:
        smtp = parse_smtp_username(p["smtp_username"])
        pop3 = parse_pop3_username(p["pop3_username"])
        for login, port in ((smtp, 465), (pop3, 995)):
            assert login.account == p["address"]
            assert (login.host, login.port) == (p["fachdienst"], port)
            assert login.konnektor_id is None
        assert smtp.user_id is None
        assert (pop3.user_id is not None) == (p["card"]["type"] == "HBA")


def test_demo_pop3_context_sees_the_participants_card(
    demo_data: tuple[Path, dict[str, Any]],
) -> None:
    """The call context from a demo POP3 username finds the participant's card, the HBA too
    (its UserId is what makes it visible; digest §1.2, ILF-PS)."""
    data_dir, demo = demo_data
    konnektor = InProcessKonnektor(Konnektor.from_data_dir(data_dir, persist_revocations=False))
    for p in demo["participants"]:
        context = parse_pop3_username(p["pop3_username"]).context()
        wanted = CardType(p["card"]["type"])
        iccsns = {card.iccsn for card in konnektor.get_cards(context, wanted)}
        assert p["card"]["iccsn"] in iccsns
    hba = next(p for p in demo["participants"] if p["card"]["type"] == "HBA")
    without_user = parse_smtp_username(hba["smtp_username"]).context()
    assert hba["card"]["iccsn"] not in {
        c.iccsn for c in konnektor.get_cards(without_user, CardType.HBA)
    }


def test_context_defaults_fill_a_placeholder_only_where_configured() -> None:
    """The Clientmodul's call-context defaults (``[clientmodul] mandant_id`` ...): a username
    may write ``*`` or nothing for a context field that has one, and the default is the call
    context; a field without a default stays mandatory (digest §1.2)."""
    defaults = ContextDefaults(mandant_id="Mandant1", workplace_id="AP1")
    login = parse_smtp_username("praxis.weber@fd1.kim.telematik-test#*#*#PVS1#", defaults=defaults)
    assert login.context() == CallContext("Mandant1", "PVS1", "AP1")
    pop3 = parse_pop3_username(
        "dr.meyer@fd2.kim.telematik-test#*##PVS1#AP7#dr.meyer", defaults=defaults
    )
    assert pop3.context() == CallContext("Mandant1", "PVS1", "AP7", "dr.meyer")
    with pytest.raises(UsernameError) as caught:
        parse_smtp_username("praxis.weber@fd1.kim.telematik-test#*#*#*#AP1", defaults=defaults)
    assert caught.value.field == "ClientSystemId"
    with pytest.raises(UsernameError, match="placeholder"):
        parse_smtp_username("praxis.weber@fd1.kim.telematik-test#*#*#PVS1#AP1")

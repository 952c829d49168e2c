"""Filter evaluation against an entry (RFC 4511 §4.5.1.7) and attribute selection."""

from __future__ import annotations

import pytest

from kim_appliance.directory.entries import DirectoryEntry, KimAddress
from kim_appliance.directory.filters import Truth, evaluate, matches, select_attributes
from kim_appliance.protocols.ldap import (
    And,
    Approx,
    Equality,
    Extensible,
    GreaterOrEqual,
    LessOrEqual,
    Not,
    Or,
    Presence,
    Substrings,
)

CERT = b"\x30\x82\x01\x00" + bytes(range(200))
ENTRY = DirectoryEntry(
    uid="u1",
    telematik_id="1-SMC-B-Testkarte-883110000100001",
    display_name="Hausarztpraxis  Dr. Weber",
    certificates=(CERT,),
    fachdaten={"fd1.kim.telematik-test": (KimAddress("Praxis.Weber@fd1.kim.telematik-test"),)},
    locality="Berlin",
    max_kom_le_adr=10,
    entry_type=("2",),
).ldap_attributes()


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (Equality("mail", b"praxis.weber@FD1.kim.telematik-test"), Truth.TRUE),
        (Equality("MAIL", b"praxis.weber@fd1.kim.telematik-test"), Truth.TRUE),
        (Equality("displayName", b"hausarztpraxis dr. weber"), Truth.TRUE),
        (Equality("cn", b"other"), Truth.FALSE),
        (Equality("l", b"BERLIN"), Truth.TRUE),
        (Equality("localityName", b"berlin"), Truth.TRUE),
        (Equality("sn", b"Weber"), Truth.FALSE),  # known attribute, absent: FALSE
        (Equality("noSuchAttribute", b"x"), Truth.UNDEFINED),
        (Equality("mail;lang-de", b"x"), Truth.UNDEFINED),
        (Equality("userCertificate;binary", CERT), Truth.TRUE),
        (Equality("usercertificate;BINARY", CERT[:-1]), Truth.FALSE),
        (GreaterOrEqual("userCertificate;binary", CERT), Truth.UNDEFINED),
        (Substrings("displayName", b"haus", (b"dr",), b"weber"), Truth.TRUE),
        (Substrings("displayName", None, (b"praxis",), None), Truth.TRUE),
        (Substrings("displayName", b"praxis", (), None), Truth.FALSE),
        (Substrings("mail", None, (), b"@fd2.kim.telematik-test"), Truth.FALSE),
        (Substrings("displayName", b"hausarztpraxis dr. weber", (), b"weber"), Truth.FALSE),
        (Presence("userCertificate"), Truth.TRUE),
        (Presence("objectclass"), Truth.TRUE),
        (Presence("givenName"), Truth.FALSE),
        (Presence("bogus"), Truth.FALSE),
        (GreaterOrEqual("maxKOMLEadr", b"9"), Truth.TRUE),
        (LessOrEqual("maxKOMLEadr", b"9"), Truth.FALSE),
        (GreaterOrEqual("maxKOMLEadr", b"x"), Truth.UNDEFINED),
        (GreaterOrEqual("entryType", b"10"), Truth.FALSE),  # integers, not strings
        (Approx("l", b"berlin"), Truth.TRUE),
        (Extensible("2.5.13.2", "cn", b"x", False), Truth.UNDEFINED),
        (Not(Equality("bogus", b"x")), Truth.UNDEFINED),
        (And((Equality("l", b"berlin"), Equality("bogus", b"x"))), Truth.UNDEFINED),
        (And((Equality("l", b"hamburg"), Equality("bogus", b"x"))), Truth.FALSE),
        (Or((Equality("l", b"hamburg"), Equality("bogus", b"x"))), Truth.UNDEFINED),
        (Or((Equality("l", b"berlin"), Equality("bogus", b"x"))), Truth.TRUE),
        (Not(Equality("l", b"hamburg")), Truth.TRUE),
    ],
)
def test_filter_evaluation(f: object, expected: Truth) -> None:
    assert evaluate(f, ENTRY) is expected  # type: ignore[arg-type]


def test_undefined_never_matches_even_negated() -> None:
    """RFC 4511 §4.5.1.7: an unknown attribute is Undefined, not an error, and not(Undefined)
    is still Undefined, so neither the filter nor its negation returns the entry."""
    assert not matches(Equality("bogus", b"x"), ENTRY)
    assert not matches(Not(Equality("bogus", b"x")), ENTRY)


def test_select_attributes() -> None:
    assert set(select_attributes(ENTRY, ["MAIL", "userCertificate;binary"])) == {
        "mail",
        "userCertificate;binary",
    }
    assert select_attributes(ENTRY, ["userCertificate"])["userCertificate;binary"] == [CERT]
    assert select_attributes(ENTRY, ["1.1"]) == {}
    everything = select_attributes(ENTRY, [])
    assert everything == select_attributes(ENTRY, ["*"])
    assert {"mail", "komLeData", "kimData", "telematikID", "cn"} <= set(everything)
    assert select_attributes(ENTRY, ["o", "cn"], types_only=True) == {"cn": []}
    assert select_attributes(ENTRY, ["unknownThing"]) == {}

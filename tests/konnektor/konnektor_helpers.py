"""Shared names of the Konnektor tests: the demo cards and the call contexts."""

from __future__ import annotations

from kim_appliance.konnektor import Context, Konnektor

WEBER = "80276883110000100001"  # SMC-B, RSA
SONNE = "80276883110000100002"  # SMC-B, ECC
KLEIN = "80276883110000100003"  # SMC-B, RSA + ECC
MEYER = "80276883110000100004"  # HBA, RSA + ECC
MEYER_PRACTICE = "80276883110000100904"  # SMC-B of Dr. Meyer's practice, OSIG only

ADDRESSES = {
    WEBER: "praxis.weber@fd1.kim.telematik-test",
    SONNE: "apotheke.sonne@fd2.kim.telematik-test",
    KLEIN: "zahnarzt.klein@fd1.kim.telematik-test",
    MEYER: "dr.meyer@fd2.kim.telematik-test",
}
CONTEXT = Context("Mandant1", "PVS1", "AP1")
HBA_CONTEXT = Context("Mandant1", "PVS1", "AP1", "dr.meyer")


def handle(konnektor: Konnektor, iccsn: str) -> str:
    """The current card handle of ``iccsn`` as GetCards reports it (with the HBA context)."""
    for info in konnektor.get_cards(HBA_CONTEXT):
        if info.iccsn == iccsn:
            return info.card_handle
    raise AssertionError(f"card {iccsn} not reported by GetCards")

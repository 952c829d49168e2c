"""The call context (TUC_KON_000) and the card visibility of the Infomodell; konnektor.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from konnektor_helpers import CONTEXT, HBA_CONTEXT, KLEIN, MEYER, MEYER_PRACTICE, SONNE, WEBER

from kim_appliance.demo import konnektor_config
from kim_appliance.errors import ConfigError
from kim_appliance.konnektor import Context, ContextError, Konnektor
from kim_appliance.konnektor.infomodell import (
    FILE_NAME,
    Infomodell,
    KonnektorConfig,
    Mandant,
)

# A second Mandant with its own client system and workplace, to tell 4010/4011/4014 apart.
MODEL = Infomodell(
    [
        Mandant("Mandant1", {"PVS1"}, {"AP1": {"PVS1"}, "AP2": set()}, {WEBER}),
        Mandant("Mandant2", {"PVS2"}, {"AP9": {"PVS2"}}, set()),
    ]
)


@pytest.mark.parametrize(
    ("context", "code", "named"),
    [
        (Context("", "PVS1", "AP1"), 4021, "MandantId"),
        (Context("Mandant1", "PVS1", ""), 4021, "WorkplaceId"),
        (Context("MandantX", "PVS1", "AP1"), 4004, "MandantX"),
        (Context("Mandant1", "PVSX", "AP1"), 4005, "PVSX"),
        (Context("Mandant1", "PVS1", "APX"), 4006, "APX"),
        (Context("Mandant1", "PVS2", "AP1"), 4010, "PVS2"),
        (Context("Mandant1", "PVS1", "AP9"), 4011, "AP9"),
        (Context("Mandant1", "PVS1", "AP2"), 4014, "AP2"),
    ],
)
def test_context_errors_carry_gematiks_codes(context: Context, code: int, named: str) -> None:
    """A bad context is refused with the TUC_KON_000 code and names the offending ID."""
    with pytest.raises(ContextError) as info:
        MODEL.check(context)
    assert info.value.code == code
    assert named in str(info.value)
    assert info.value.error_type == "Security"


def test_valid_context_passes() -> None:
    assert MODEL.check(Context("Mandant1", "PVS1", "AP1")).id == "Mandant1"


def test_demo_context_sees_every_smcb_and_the_hba_only_with_its_user(
    konnektor: Konnektor,
) -> None:
    """Mandant1/PVS1/AP1 sees every demo SMC-B; the HBA needs UserId dr.meyer."""
    plain = {c.iccsn for c in konnektor.get_cards(CONTEXT)}
    assert plain == {WEBER, SONNE, KLEIN, MEYER_PRACTICE}
    with_user = {c.iccsn for c in konnektor.get_cards(HBA_CONTEXT)}
    assert with_user == plain | {MEYER}
    other_user = Context("Mandant1", "PVS1", "AP1", "somebody.else")
    assert MEYER not in {c.iccsn for c in konnektor.get_cards(other_user)}


def test_get_cards_refuses_a_bad_context(konnektor: Konnektor) -> None:
    with pytest.raises(ContextError) as info:
        konnektor.get_cards(Context("Mandant9", "PVS1", "AP1"))
    assert info.value.code == 4004


def test_config_round_trips_through_konnektor_json(own_data_dir: Path) -> None:
    """konnektor_config -> save -> load gives the same Infomodell and cards."""
    participants = json.loads((own_data_dir / "demo.json").read_text())["participants"]
    config = konnektor_config(own_data_dir, participants)
    path = own_data_dir / FILE_NAME
    config.save(path)
    loaded = KonnektorConfig.load(path)
    assert loaded.to_json() == config.to_json()
    assert {c.iccsn for c in loaded.cards} == {WEBER, SONNE, KLEIN, MEYER, MEYER_PRACTICE}


def test_the_konnektor_reads_its_cards_from_konnektor_json_only(own_data_dir: Path) -> None:
    """``init`` writes konnektor.json (kim_appliance.demo); the Konnektor reads nothing of the
    demo: without the file it refuses to start and names it."""
    path = own_data_dir / FILE_NAME
    assert path.is_file()
    Konnektor.from_data_dir(own_data_dir)
    path.unlink()
    with pytest.raises(ConfigError, match=r"konnektor\.json: missing"):
        Konnektor.from_data_dir(own_data_dir)


def test_malformed_konnektor_json_is_refused_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_text('{"format": "something-else"}')
    with pytest.raises(ConfigError, match="format 'something-else'"):
        KonnektorConfig.load(path)

"""``kim-appliance card import``: foreign keys on an emulated card (issue 6 item 7).

Offline, on a minimal data dir (``konnektor.json`` with one Mandant and no cards), so no test
PKI is made. The imported card is then loaded as the Konnektor loads it at start.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from parties import SimpleCa

from kim_appliance.cli import main
from kim_appliance.konnektor.card_import import CardImportError, classify, import_card
from kim_appliance.konnektor.cards import CardSet, CardType, Crypt, KeyPurpose
from kim_appliance.konnektor.faults import FaultState
from kim_appliance.konnektor.infomodell import (
    Context,
    Infomodell,
    KonnektorConfig,
    Mandant,
)
from kim_appliance.store import open_store

ICCSN = "80276001011699901001"
CONTEXT = Context("Mandant1", "PVS1", "AP1")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    mandant = Mandant("Mandant1", {"PVS1"}, {"AP1": {"PVS1"}}, set())
    KonnektorConfig(Infomodell([mandant]), []).save(root / "konnektor.json")
    return root


def _sample_pair(gematik_sample: Path, who: str = "A") -> tuple[Path, Path]:
    stem = {"A": "hci-enc-2-kim-bsp", "B": "hci-enc-3-kim-bsp"}[who]
    return gematik_sample / who / f"{stem}.prv.pem", gematik_sample / who / f"{stem}.pem"


def _loaded(data_dir: Path) -> tuple[KonnektorConfig, CardSet]:
    config = KonnektorConfig.load(data_dir / "konnektor.json")
    return config, CardSet.load(config.cards, data_dir, FaultState())


def test_gematik_sample_key_becomes_an_smcb(data_dir: Path, gematik_sample: Path) -> None:
    """Digest §2.9: the sample's C.HCI.ENC certificate (policy 1.2.276.0.76.4.76) makes an
    ENC/RSA key of an SMC-B; holder and Telematik-ID come from the certificate (CN, Admission
    registrationNumber); every workplace of the Mandant sees the card; the key file is 0600."""
    result = import_card(data_dir, iccsn=ICCSN, pairs=[_sample_pair(gematik_sample)])
    assert result.card.card_type is CardType.SMC_B
    assert result.card.telematik_id == "2-290002"
    assert result.card.holder == "Zahnarztpraxis 2 KIM-Bsp TEST-ONLY"
    config, cards = _loaded(data_dir)
    assert ICCSN in config.infomodell.visible_iccsns(CONTEXT)
    card = cards.by_iccsn(ICCSN)
    assert card.algorithms(KeyPurpose.ENC) == [Crypt.RSA]
    assert f"{card.certificate(KeyPurpose.ENC, Crypt.RSA).serial_number:X}" == "FF22A88FFD24"
    mode = stat.S_IMODE(os.stat(result.keys[0].key_path).st_mode)
    assert mode == 0o600


def test_ecc_keys_and_an_hba_for_its_user(
    data_dir: Path, tmp_path: Path, cas: dict[str, SimpleCa]
) -> None:
    """Digest §1.2, §2.8: a brainpoolP256r1 key (key usage keyAgreement: ENC) and an RSA
    signing key (nonRepudiation: OSIG) on an HBA; the HBA is visible with its holder's UserId
    only."""
    pairs = []
    for kind, usage in (("ECC", "enc"), ("RSA", "sign")):
        key = cas[kind].issue(kind, f"Dr. Import {kind}", usage=usage)
        key_file, cert_file = tmp_path / f"{kind}.key.pem", tmp_path / f"{kind}.cert.pem"
        key_file.write_bytes(
            key.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_file.write_bytes(key.certificate.public_bytes(serialization.Encoding.PEM))
        pairs.append((key_file, cert_file))
    with pytest.raises(CardImportError, match="--user-id"):
        import_card(data_dir, iccsn=ICCSN, pairs=pairs, card_type=CardType.HBA)
    import_card(data_dir, iccsn=ICCSN, pairs=pairs, card_type=CardType.HBA, user_id="dr.import")
    config, cards = _loaded(data_dir)
    card = cards.by_iccsn(ICCSN)
    assert card.algorithms(KeyPurpose.ENC) == [Crypt.ECC]
    assert card.algorithms(KeyPurpose.OSIG) == [Crypt.RSA]
    assert ICCSN not in config.infomodell.visible_iccsns(CONTEXT)
    with_user = Context("Mandant1", "PVS1", "AP1", "dr.import")
    assert ICCSN in config.infomodell.visible_iccsns(with_user)


def test_refusals_write_nothing(data_dir: Path, gematik_sample: Path) -> None:
    """A key that is not the certificate's, a bad or taken ICCSN: refused with the option
    named, and konnektor.json stays as it was."""
    before = (data_dir / "konnektor.json").read_bytes()
    key_a, cert_a = _sample_pair(gematik_sample, "A")
    key_b, _ = _sample_pair(gematik_sample, "B")
    with pytest.raises(CardImportError, match="does not belong to --cert"):
        import_card(data_dir, iccsn=ICCSN, pairs=[(key_b, cert_a)])
    with pytest.raises(CardImportError, match="--iccsn"):
        import_card(data_dir, iccsn="1234", pairs=[(key_a, cert_a)])
    with pytest.raises(CardImportError, match="second ENC/RSA"):
        import_card(data_dir, iccsn=ICCSN, pairs=[(key_a, cert_a), (key_a, cert_a)])
    assert (data_dir / "konnektor.json").read_bytes() == before
    assert not (data_dir / "cards").exists()
    import_card(data_dir, iccsn=ICCSN, pairs=[(key_a, cert_a)])
    with pytest.raises(CardImportError, match="already has a card"):
        import_card(data_dir, iccsn=ICCSN, pairs=[(key_a, cert_a)])


def test_classify_by_policy_oid(gematik_sample: Path) -> None:
    """Digest §2.9: C.HCI.ENC = 1.2.276.0.76.4.76 on an SMC-B."""
    _, cert_file = _sample_pair(gematik_sample)
    certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert classify(certificate) == (KeyPurpose.ENC, CardType.SMC_B)


def test_cli_refuses_while_the_appliance_runs(
    data_dir: Path, gematik_sample: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Konnektor reads konnektor.json at start: importing into a running appliance's data
    dir would be silently ignored, so the CLI refuses while the appliance's store is open."""
    key, cert = _sample_pair(gematik_sample)
    args = ["card", "import", "--data-dir", str(data_dir), "--iccsn", ICCSN,
            "--key", str(key), "--cert", str(cert)]  # fmt: skip
    opened, release = threading.Event(), threading.Event()

    async def hold() -> None:
        async with open_store(None, data_dir):
            opened.set()
            await trio.to_thread.run_sync(release.wait)

    holder = threading.Thread(target=trio.run, args=(hold,))
    holder.start()
    try:
        assert opened.wait(30)
        assert main(args) == 1
        assert "running" in capsys.readouterr().err
    finally:
        release.set()
        holder.join(30)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ENC/RSA" in out
    assert "FF22A88FFD24" in out
    cards = json.loads((data_dir / "konnektor.json").read_text())["cards"]
    assert [c["iccsn"] for c in cards] == [ICCSN]

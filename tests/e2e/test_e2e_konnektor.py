"""The emulated Konnektor of a running ``kim-appliance run``: connector.sds over HTTPS, found
through endpoints.json, and faults switched with ``kim-appliance fault`` (issue 4 §3/§4/§6)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from e2e_appliance import Launcher, cli
from lxml import etree


def _get(url: str, ca: str) -> bytes:
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(url, context=context, timeout=30) as response:
        data: bytes = response.read()
        return data


def test_connector_sds_lists_the_services(data_dir: Path, launcher: Launcher) -> None:
    """KOM-LE-A_2076: the service endpoints of the Konnektor come from connector.sds, over TLS
    trusted with tls_ca (KOM-LE-A_2070)."""
    app = launcher.start(data_dir)
    sds = app.endpoints["konnektor"]["sds"]
    assert sds.startswith("https://")
    assert sds.endswith("/connector.sds")
    document = etree.fromstring(_get(sds, app.endpoints["tls_ca"]))
    names = {e.get("Name") for e in document.iter() if e.tag.endswith("Service")}
    assert {"CardService", "SignatureService", "EncryptionService"} <= names


def test_fault_cli_switches_the_konnektor_unreachable_and_back(
    data_dir: Path, launcher: Launcher
) -> None:
    """A tester pulls the Konnektor's plug with `kim-appliance fault --unreachable on` and puts
    it back; the status output says what is switched on."""
    app = launcher.start(data_dir)
    on = cli("fault", "--data-dir", str(data_dir), "--unreachable", "on", cwd=data_dir.parent)
    assert on.returncode == 0, on.stderr
    assert "Konnektor unreachable" in on.stdout
    state = cli("fault", "--data-dir", str(data_dir), "--json", cwd=data_dir.parent)
    assert json.loads(state.stdout)["unreachable"] is True
    sds = app.endpoints["konnektor"]["sds"]
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(sds, app.endpoints["tls_ca"])
    off = cli("fault", "--data-dir", str(data_dir), "--clear", "--json", cwd=data_dir.parent)
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["unreachable"] is False
    assert b"ServiceInformation" in _get(sds, app.endpoints["tls_ca"])

"""The Clientmodul against outside partners (issue 14): ``kim-appliance run --components`` and
``[clientmodul] konnektor/directory`` and ``[clientmodul.fachdienste]`` in ``config.toml``, as a
practice runs a Clientmodul next to its own Konnektor and the TI's VZD and Fachdienste.

Processes are real ``kim-appliance run`` processes on copies of one initialised data dir (the
same demo cards and accounts); smtplib and poplib play the PVS.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from cm_modes import (
    CLIENTMODUL_AND_FACHDIENSTE,
    KONNEKTOR_AND_VZD,
    clientmodul_config,
    copy,
    write_config,
)
from e2e_appliance import Appliance, Launcher, cli, cm_send, cm_wait, pop3_fetch

CRLF = default.clone(linesep="\r\n")


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    logs = tmp_path / "logs"
    logs.mkdir()
    result = Launcher(logs)
    try:
        yield result
    finally:
        result.close()


def _mail(sender: dict[str, Any], to: dict[str, Any], subject: str, attachment: bytes) -> bytes:
    msg = EmailMessage(policy=CRLF)
    msg["From"] = sender["address"]
    msg["To"] = to["address"]
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4()}@kim>"
    msg.set_content(f"{subject}.\n")
    msg.add_attachment(attachment, maintype="application", subtype="octet-stream",
                       filename="anhang.bin")  # fmt: skip
    return msg.as_bytes()


def _delivered(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    assert message["X-KIM-DecryptionResult"] == "00", raw[:2000]
    assert message.get_all("X-KIM-IntegrityCheckResult") == ["01"], raw[:2000]
    return message


def _attachment(message: EmailMessage) -> bytes:
    (part,) = [p for p in message.walk() if p.get_content_disposition() == "attachment"]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def test_konnektor_and_vzd_in_one_process_the_clientmodul_in_another(
    template_dir: Path, tmp_path: Path, launcher: Launcher
) -> None:
    """Issue 14, KOM-LE-A_2070, KOM-LE-A_2076, KOM-LE-A_2128: one appliance runs only the
    Konnektor and the VZD, the other the Clientmodul, the Fachdienste and the console, its
    Clientmodul pointed at the first (connector.sds over TLS, LDAPS, the first's TLS CA). Each
    endpoints.json lists what its process runs; a mail from the RSA practice to the HBA holder
    is signed by SignDocument and decrypted by DecryptDocument in the other process, 00/01."""
    partner = launcher.start(copy(template_dir, tmp_path, "konnektor-vzd"),
                             "--components", KONNEKTOR_AND_VZD)  # fmt: skip
    assert set(partner.endpoints) - {"pid"} == {"tls_ca", "konnektor", "directory"}
    data_dir = copy(template_dir, tmp_path, "kim-data")
    write_config(data_dir, clientmodul_config(partner))
    client = launcher.start(data_dir, "--components", CLIENTMODUL_AND_FACHDIENSTE)
    assert set(client.endpoints) - {"pid"} == {"tls_ca", "clientmodul", "fachdienste", "console"}
    cm = client.endpoints["clientmodul"]
    assert cm["konnektor"] == partner.endpoints["konnektor"]["sds"]
    assert cm["directory"] == f"ldaps://{partner.endpoints['directory']['ldaps']}"
    weber, meyer = client.participant("praxis.weber"), client.participant("dr.meyer")
    blob = os.urandom(3000)
    assert not cm_send(client, weber, [meyer["address"]], _mail(weber, meyer, "Befund", blob))
    (raw,) = cm_wait(client, meyer, 1)
    assert _attachment(_delivered(raw)) == blob
    # the console of the Clientmodul's process shows no Konnektor of its own
    with urllib.request.urlopen(client.endpoints["console"] + "api/status", timeout=30) as answer:
        status = json.loads(answer.read())
    assert status["konnektor"] is None
    assert status["cards"] == []


def test_a_clientmodul_only_process_serves_a_practice(
    template_dir: Path, tmp_path: Path, launcher: Launcher
) -> None:
    """Issue 14 item 3 (digest §1.2, §3.1): a process with only the Clientmodul serves a
    practice against an outside Konnektor, VZD and Fachdienste. ``[clientmodul.fachdienste]``
    maps the host:port the usernames name (SMTP 465, POP3 995, HTTPS 443) to the other
    process's ports, the TLS name checked stays the Fachdienst's own. A small mail and a 16 MB
    one (through the sender's KAS: addMailData through the HTTPS entry of the table) arrive
    decrypted and verified."""
    outside = launcher.start(copy(template_dir, tmp_path, "outside"),
                             "--components", f"{KONNEKTOR_AND_VZD},fachdienst")  # fmt: skip
    table = ""
    for domain, urls in outside.endpoints["fachdienste"].items():
        https = urls["https"].removeprefix("https://")
        table += f'"{domain}:465" = "{urls["smtp"]}"\n"{domain}:995" = "{urls["pop3"]}"\n'
        table += f'"{domain}:443" = "{https}"\n'
    data_dir = copy(template_dir, tmp_path, "practice")
    write_config(data_dir, clientmodul_config(outside, table=table))
    practice = launcher.start(data_dir, "--components", "clientmodul")
    assert set(practice.endpoints) - {"pid"} == {"tls_ca", "clientmodul"}
    # the demo usernames name fd1.kim.telematik-test:465 and so on: the table resolves them
    view = Appliance(practice.data_dir, practice.process, practice.stderr_path,
                     {**outside.endpoints, "clientmodul": practice.endpoints["clientmodul"]},
                     practice.started_in)  # fmt: skip
    klein, sonne = view.participant("zahnarzt.klein"), view.participant("apotheke.sonne")
    small = os.urandom(2000)
    assert not cm_send(view, klein, [sonne["address"]], _mail(klein, sonne, "klein", small))
    large = os.urandom(16 * 1024 * 1024)
    assert not cm_send(view, klein, [sonne["address"]], _mail(klein, sonne, "gross", large),
                       timeout=300)  # fmt: skip
    stored = pop3_fetch(outside, sonne)  # at the outside Fachdienst: the KAS one is small
    assert len(stored) == 2
    assert max(len(m) for m in stored) < 1024 * 1024
    delivered = [_delivered(raw) for raw in cm_wait(view, sonne, 2, wait=300)]
    got = {str(m["Subject"]): m for m in delivered}
    assert _attachment(got["klein"]) == small
    assert _attachment(got["gross"]) == large


def test_a_clientmodul_without_its_konnektor_does_not_start(
    template_dir: Path, tmp_path: Path
) -> None:
    """``--components clientmodul`` with the in-process Konnektor configured (the default) is
    refused before anything is bound, saying what to change."""
    data_dir = copy(template_dir, tmp_path, "kim-data")
    done = cli("run", "--ephemeral-ports", "--data-dir", str(data_dir),
               "--components", "clientmodul", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "[clientmodul] konnektor" in done.stderr
    assert "--components" in done.stderr
    assert not (data_dir / "endpoints.json").exists()


def test_an_unknown_component_is_a_usage_error(tmp_path: Path) -> None:
    done = cli("run", "--data-dir", str(tmp_path / "d"), "--components", "konnektor,vzd",
               cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0
    assert "unknown: vzd" in done.stderr
    assert "fachdienst, clientmodul, konnektor, directory, console" in done.stderr

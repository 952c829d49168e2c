"""The two modes the Clientmodul's end-to-end tests run in (issue 14), as ``kim-appliance run``
processes:

* ``in-process``: one appliance with every component; the Clientmodul calls the Konnektor and
  the VZD objects of its own process;
* ``network``: two appliances. The first runs only the Konnektor and the VZD (``--components
  konnektor,directory``); the second the Clientmodul, the Fachdienste and the console, its
  Clientmodul pointed at the first's ``connector.sds`` (SOAP over TLS) and LDAPS port, with
  the first's TLS CA, all through ``config.toml`` (``[clientmodul] konnektor``,
  ``konnektor_ca``, ``directory``, ``directory_ca``). Both data dirs are copies of one
  initialised template (the same demo cards, certificates and passwords, as a practice's
  Konnektor and its Fachdienst account would be).

:func:`running` returns one :class:`~e2e_appliance.Appliance` view either way: the
Clientmodul's and the Fachdienste's endpoints from the process that runs them, the Konnektor's
(fault switches) and the VZD's from the process that runs those. The tests use it as they
always have. Like e2e_appliance, this module only uses what the appliance writes (files,
endpoints) and the standard library.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from e2e_appliance import Appliance, Launcher

MODES = ("in-process", "network")
#: the components of the two processes of the network mode (the brief of issue 14)
KONNEKTOR_AND_VZD = "konnektor,directory"
CLIENTMODUL_AND_FACHDIENSTE = "clientmodul,fachdienst,console"


def write_config(data_dir: Path, text: str) -> None:
    """``data_dir/config.toml`` as a user writes it: only what differs from the defaults (the
    data dir must not run yet)."""
    (data_dir / "config.toml").write_text(text, encoding="utf-8")


def clientmodul_config(partner: Appliance, *, extra: str = "", table: str = "") -> str:
    """``[clientmodul]`` of a Clientmodul that uses ``partner``'s Konnektor and VZD."""
    ca = partner.endpoints["tls_ca"]
    return (
        "[clientmodul]\n"
        f'konnektor = "{partner.endpoints["konnektor"]["sds"]}"\n'
        f'konnektor_ca = "{ca}"\n'
        f'directory = "ldaps://{partner.endpoints["directory"]["ldaps"]}"\n'
        f'directory_ca = "{ca}"\n' + extra + ("\n[clientmodul.fachdienste]\n" + table)
    )


def copy(template: Path, root: Path, name: str) -> Path:
    data_dir = root / name
    shutil.copytree(template, data_dir)
    return data_dir


def combined(client: Appliance, partner: Appliance) -> Appliance:
    """One view of the two processes: the Clientmodul's side, with the partner's Konnektor and
    VZD endpoints (its fault switches take the same admin token: both data dirs come from one
    template)."""
    endpoints: dict[str, Any] = dict(client.endpoints)
    endpoints["konnektor"] = partner.endpoints["konnektor"]
    endpoints["directory"] = partner.endpoints["directory"]
    return Appliance(client.data_dir, client.process, client.stderr_path, endpoints,
                     client.started_in)  # fmt: skip


def running(mode: str, template: Path, root: Path) -> tuple[Launcher, Appliance]:
    """The appliance(s) of ``mode`` on copies of ``template`` under ``root``; the caller closes
    the launcher (it kills whatever still runs)."""
    log_dir = root / "logs"
    log_dir.mkdir()
    launcher = Launcher(log_dir)
    try:
        if mode == "in-process":
            return launcher, launcher.start(copy(template, root, "kim-data"))
        partner = launcher.start(
            copy(template, root, "konnektor-vzd"), "--components", KONNEKTOR_AND_VZD
        )
        data_dir = copy(template, root, "kim-data")
        write_config(data_dir, clientmodul_config(partner))
        client = launcher.start(data_dir, "--components", CLIENTMODUL_AND_FACHDIENSTE)
        return launcher, combined(client, partner)
    except BaseException:
        launcher.close()
        raise

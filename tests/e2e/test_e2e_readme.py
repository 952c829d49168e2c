"""Issue 15 (README): every shell and Python example of the README runs as written against a
running appliance, from the directory that holds ``kim-data``, as a newcomer would run it.

The appliance runs with ``--ephemeral-ports``; the README's examples name the default ports of
``config.toml``, and the test replaces each with the port that listener got (what a reader
does with ``endpoints.json``), nothing else. Examples run in the README's order (the faults
switched by one are seen by the next). A block preceded by ``<!-- readme-test: skip: REASON
-->`` is skipped visibly with that reason (it installs packages, needs a database server or
your own keys, runs for minutes). ``toml`` blocks must be valid TOML; blocks without a language
(diagrams, tables in code) are no examples.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_appliance import Appliance, Launcher, split_hostport

README = Path(__file__).resolve().parents[2] / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")
_SKIP = re.compile(r"^<!-- readme-test: skip: (.+?) -->$")
#: seconds one example may take (the pytest example starts an appliance of its own)
EXAMPLE_TIMEOUT = 240.0
#: the mail clients the examples use (Debian: swaks, msmtp, fetchmail, curl, ldap-utils)
TOOLS = ("curl", "swaks", "msmtp", "fetchmail", "ldapsearch")


@dataclass(frozen=True)
class Example:
    line: int
    language: str
    text: str
    skip: str | None


def examples() -> list[Example]:
    """The README's fenced blocks with a language, in order, with their skip reasons."""
    found: list[Example] = []
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        start, language = i, match.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        previous = lines[start - 1] if start else ""
        skip = _SKIP.match(previous)
        if language:
            body = "\n".join(lines[start + 1 : end]) + "\n"
            found.append(Example(start + 1, language, body, skip.group(1) if skip else None))
        i = end + 1
    return found


EXAMPLES = examples()


def _port(hostport: str) -> int:
    return split_hostport(hostport.removeprefix("https://").removeprefix("http://"))[1]


def port_map(data_dir: Path, endpoints: dict[str, object]) -> dict[int, int]:
    """Default port (config.toml as init wrote it) -> the port the appliance bound."""
    config = tomllib.loads((data_dir / "config.toml").read_text(encoding="utf-8"))
    e: dict[str, dict[str, object]] = endpoints  # type: ignore[assignment]
    cm = config["clientmodul"]
    ports = {
        cm["smtp_port"]: _port(str(e["clientmodul"]["smtp"])),
        cm["pop3_port"]: _port(str(e["clientmodul"]["pop3"])),
        config["directory"]["ldap_port"]: _port(str(e["directory"]["ldap"])),
        config["directory"]["ldaps_port"]: _port(str(e["directory"]["ldaps"])),
        config["konnektor"]["port"]: _port(str(e["konnektor"]["sds"]).split("/")[2]),
        config["console"]["port"]: _port(str(e["console"]).rstrip("/")),
    }
    fachdienste: dict[str, dict[str, str]] = e["fachdienste"]  # type: ignore[assignment]
    for domain in config["fachdienst"]["domains"]:
        bound = fachdienste[domain["domain"]]
        for kind in ("smtp", "pop3", "https"):
            ports[domain[f"{kind}_port"]] = _port(bound[kind])
    return ports


def with_ports(text: str, ports: dict[int, int]) -> str:
    """``text`` with every default port number replaced (whole numbers only: an ICCSN or a
    Telematik-ID that contains the digits stays as it is)."""
    pattern = re.compile(r"(?<![\d.])(" + "|".join(str(p) for p in ports) + r")(?![\d])")
    return pattern.sub(lambda m: str(ports[int(m.group(1))]), text)


@pytest.fixture(scope="module")
def appliance(template_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One appliance for every example, run from a fresh directory holding ``kim-data``."""
    root = tmp_path_factory.mktemp("readme")
    data_dir = root / "kim-data"
    shutil.copytree(template_dir, data_dir)
    launcher = Launcher(root)
    try:
        yield launcher.start(data_dir)
    finally:
        launcher.close()


def _run(example: Example, app: Appliance) -> subprocess.CompletedProcess[str]:
    cwd = app.data_dir.parent
    text = with_ports(example.text, port_map(app.data_dir, app.endpoints))
    env = dict(os.environ)
    # `kim-appliance`, `python` and `python3` are the ones of this installation
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if example.language == "sh":
        command = ["bash", "-e", "-o", "pipefail", "-c", text]
    elif "def test_" in text:
        # a test file, "as it is": pytest runs it (the plugin starts its own appliance)
        (cwd / "test_readme_example.py").write_text(text, encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "test_readme_example.py"]  # fmt: skip
    else:
        command = [sys.executable, "-c", text]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT
    )


@pytest.mark.parametrize(
    "example", EXAMPLES, ids=[f"README.md:{e.line}-{e.language}" for e in EXAMPLES]
)
def test_readme_example_runs_as_written(example: Example, appliance: Appliance) -> None:
    """The example exits 0 against the running appliance (ports as bound)."""
    if example.skip is not None:
        pytest.skip(f"README.md:{example.line}: {example.skip}")
    if example.language == "toml":
        tomllib.loads(example.text)  # a configuration example must at least parse
        return
    assert example.language in ("sh", "python"), f"README.md:{example.line}: {example.language}"
    missing = [t for t in TOOLS if re.search(rf"\b{t}\b", example.text) and not shutil.which(t)]
    if missing and os.environ.get("KIM_CI") != "1":
        pytest.skip(f"{', '.join(missing)} not installed (Debian: see the README's test section)")
    done = _run(example, appliance)
    assert done.returncode == 0, (
        f"README.md:{example.line} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
        f"\n--- stderr\n{done.stderr[-3000:]}"
    )


def test_the_readme_has_examples_and_few_are_skipped() -> None:
    """The test above is not empty: most examples run, and every skip says why."""
    runnable = [e for e in EXAMPLES if e.skip is None and e.language in ("sh", "python")]
    skipped = [e for e in EXAMPLES if e.skip is not None]
    assert len(runnable) >= 12, [e.line for e in runnable]
    assert len(skipped) <= 8
    assert all(len(e.skip or "") > 20 for e in skipped)

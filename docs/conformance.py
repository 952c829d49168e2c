"""Regenerate docs/conformance.md from the gematik checklist, the digest and the tests.

Every requirement ID of ``../shared/spec/afo-checklist.md`` and every ID the digest
(``../shared/spec/kim-digest.md``) cites gets one row. A row lists the tests whose docstring
cites the ID (found with ``ast``), and otherwise the status written in ``STATUS`` below: which
issue builds it, or why it does not apply to an emulation. Run from the repository root:

    python docs/conformance.py [--shared ../shared]

The tests are the source of truth: cite a requirement ID in a test's docstring and rerun.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ID = re.compile(r"\b(?:KOM-LE-|GS-)?(A_\d{4,5})(?:-\d{2})?\b")
#: an ID followed by more numbers of the same family, as test docstrings abbreviate them:
#: ``KOM-LE-A_2118/2119/2121`` (each) and ``KOM-LE-A_2123–2125`` (the range)
ID_GROUP = re.compile(
    r"\b(?:KOM-LE-|GS-)?A_(\d{4,5})(?:-\d{2})?((?:\s*(?:/|–)\s*\d{4,5}(?:-\d{2})?\b)+)"
)

# What a requirement without a citing test is, by spec; per-ID entries override. Every part
# is built (issues 3-15): "open" means that no test names the requirement yet.
DEFAULT = {
    "gemSpec_CM_KOMLE": "open: built (kim_appliance/clientmodul/), no test cites it yet",
    "gemSpec_FD_KOMLE": "open: built (kim_appliance/fachdienst/), no test cites it yet",
    "gemSMIME_KOMLE": "open: built (kim_appliance/cms/), no test cites it yet",
    "digest": "open: no test cites it yet",
}
NOT_APPLICABLE_VZD_MAINTENANCE = (
    "n/a: the Account Manager writes this appliance's own VZD through the shared store, not over "
    "I_Directory_Application_Maintenance between two operators (docs/decisions.md)"
)
NOT_APPLICABLE_LOGGING = (
    "n/a: logging rules of a certified product; the emulation logs to stderr without "
    "retention or rotation"
)
STATUS: dict[str, str] = {
    # Clientmodul rows that are about a certified product, not the behaviour users test against
    **{f"A_{n}": NOT_APPLICABLE_LOGGING for n in range(2079, 2091)},
    "A_2094": "n/a: scalability of a certified product; measured by bench/ (issue 7)",
    "A_2171": "n/a: scalability of a certified product; measured by bench/ (issue 7)",
    "A_2225": "n/a: update mechanisms of a certified product (pip install is the update)",
    "A_2065": "n/a: key store protection; the emulated keys are exported test keys on purpose",
    "A_2069": "n/a: superseded (TLS 1.0); TLS 1.2+ only",
    "A_2133": "n/a: accounting for billing",
    "A_2135": NOT_APPLICABLE_LOGGING,
    "A_2136": NOT_APPLICABLE_LOGGING,
    "A_2137": NOT_APPLICABLE_LOGGING,
    "A_2145": "n/a: TSL validation; the test PKI's trust anchors replace the TSL (pki/)",
    "A_2092": "n/a: TLS towards the client systems cannot be switched off here, so there is no "
    "switch to warn about",
    "A_2230": "n/a: the Clientmodul and the emulated Konnektor share one clock (one process; "
    "with a Konnektor elsewhere, the host's clock)",
    "A_2231": "n/a: no TI platform services (DNS, NTP, TSL) in an emulation on 127.0.0.1; "
    "the endpoint table stands in for DNS",
    # Konnektor and VZD
    "A_2159": NOT_APPLICABLE_VZD_MAINTENANCE,
    "A_2160": NOT_APPLICABLE_VZD_MAINTENANCE,
    "A_2189": NOT_APPLICABLE_VZD_MAINTENANCE,
    "A_2299": NOT_APPLICABLE_VZD_MAINTENANCE,
    # Clientmodul: optional, superseded or withdrawn (texts: gemSpec_CM_KOMLE 1.13)
    "A_2014": "n/a: optional (KANN); towards the MTA the Clientmodul uses PLAIN or LOGIN only "
    "(KOM-LE-A_2013)",
    "A_2036": "n/a: optional (KANN); towards the POP3 server the Clientmodul uses USER/PASS or "
    "SASL PLAIN only (KOM-LE-A_2035)",
    "A_2176": 'n/a: superseded by the KIM 1.5 FAQ "Umgang mit dem RCPT TO" (digest §1.4): RCPT '
    "TO is answered 250 and held back; a recipient without a valid ENC certificate is dropped "
    "after DATA and reported to the sender (KOM-LE-A_2024-01, A_2025)",
    "A_2180": "n/a: withdrawn: gemSpec_CM_KOMLE 1.13 has no KOM-LE-A_2180; the result of the "
    "signature check is the note and X-KIM-IntegrityCheckResult (KOM-LE-A_2050); no PDF report "
    "is attached",
    "A_22348": "n/a: optional (KANN: keep VerifyCertificate results until notAfter); not built",
    "A_19359": "n/a: superseded by KIM 1.5.3 (digest §3.5): the whole client mail goes to the "
    "KAS, not each attachment; the 1.5.2 per-attachment form is neither sent nor read",
    # Clientmodul: not shown
    "A_17239": "open: not shown: the appliance's TLS servers have RSA certificates only "
    "(pki/tls.py), so the Clientmodul never meets a server offering RSA and ECC and its "
    "preference for ECC as a TLS client is not exercised",
    # Administrationsmodul and the practice software
    "A_19456": "n/a: no Administrationsmodul (registration dialogs); the Fachdienste the "
    "Clientmodul uses are the [clientmodul.fachdienste] table of config.toml",
    "A_19523": "n/a: no DNS in an emulation on 127.0.0.1: the [clientmodul.fachdienste] "
    "endpoint table stands in for DNS Service Discovery (as for KOM-LE-A_2231)",
    "A_23167": "n/a: a rule for the practice software (ILF-PS: regex checks of its header values "
    "per gemSpec_Perf); the Clientmodul passes the PVS's X-KIM-* headers on as they are",
    "A_27784": "n/a: a rule for the practice software (it sets X-TI-User-Agent, ILF-PS); the "
    "Clientmodul passes it on in the inner mail",
    "A_28582": "n/a: X-KIM-Auth belongs to KIM releases after the emulated 1.5.3 (digest §2.3); "
    "not built",
    # Fachdienst rows whose text is not in ../shared/reference/
    "A_2134": "open: text not in reference/; by its place between accounting (KOM-LE-A_2133, "
    "n/a) and logging (KOM-LE-A_2135-2137, n/a) an operations rule of a provider, which an "
    "emulation would mark n/a once the text confirms it",
    "A_2139": "open: text not in reference/; the Fachdienst is configured in config.toml "
    "([fachdienst], tests/test_config.py), but which parameters the requirement names is "
    "not known",
    "A_2146": 'open: text not in reference/; the digest only says "mail is processed per the '
    'S/MIME profile" (§3.2); the Fachdienste carry KIM messages unchanged '
    "(test_every_ordered_pair_of_demo_participants), but what the profile asks of the "
    "Fachdienst itself is not known",
    # Account Manager
    "A_2158": NOT_APPLICABLE_LOGGING,
    "A_2154": "open: not built: the digest says deletion notices must be sent (§3.2) but not "
    "their format, recipient or timing; nothing is sent before the retention deletes mail",
}


def checklist(path: Path) -> list[tuple[str, str, str]]:
    """(spec, ID, title) rows of the checklist's tables."""
    rows: list[tuple[str, str, str]] = []
    spec = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## (\S+)", line)
        if heading:
            spec = heading.group(1)
        match = re.match(r"^\| (KOM-LE-A_\d+) \| (.+?) \|$", line)
        if match:
            rows.append((spec, match.group(1), match.group(2)))
    return rows


def digest_ids(path: Path) -> dict[str, tuple[str, str]]:
    """ID -> (as written, section) for every requirement the digest cites."""
    found: dict[str, tuple[str, str]] = {}
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("###"):
            section = line.lstrip("#").strip().split(" (")[0]
        for match in ID.finditer(line):
            found.setdefault(match.group(1), (match.group(0), section))
    return found


def _ids_in(source: str) -> set[str]:
    """Every requirement ID ``source`` names, abbreviated groups and ranges expanded."""
    keys = {m.group(1) for m in ID.finditer(source)}
    for group in ID_GROUP.finditer(source):
        previous = int(group.group(1))
        for sep, number in re.findall(r"(/|–)\s*(\d{4,5})", group.group(2)):
            current = int(number)
            if sep == "–" and previous < current <= previous + 20:
                keys.update(f"A_{n}" for n in range(previous + 1, current))
            keys.add(f"A_{current}")
            previous = current
    return keys


def citing_tests(tests: Path) -> dict[str, list[str]]:
    """ID -> ["tests/x.py::test_name", ...] for every test whose docstring cites the ID."""
    result: dict[str, list[str]] = defaultdict(list)
    for file in sorted(tests.rglob("test_*.py")):
        text = file.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
                "test"
            ):
                # the docstring, or the parameters and body (parametrised rule cases)
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                source = "\n".join(lines[first - 1 : node.end_lineno])
                for key in sorted(_ids_in(source)):
                    result[key].append(f"`{file.relative_to(ROOT)}::{node.name}`")
    return result


def render(shared: Path) -> str:
    rows = checklist(shared / "spec/afo-checklist.md")
    cited = digest_ids(shared / "spec/kim-digest.md")
    tests = citing_tests(ROOT / "tests")
    out = [
        "# Conformance: gematik requirements and the tests that show them",
        "",
        "Generated by `python docs/conformance.py` from `../shared/spec/afo-checklist.md`, the",
        "requirement IDs cited in `../shared/spec/kim-digest.md`, and the docstrings of the tests",
        "(a test shows a requirement by citing its ID). Rows without a test say which issue builds",
        "the requirement or why it does not apply to an emulation.",
        "",
    ]
    listed = set()
    for spec in dict.fromkeys(spec for spec, _, _ in rows):
        out += [f"## {spec}", "", "| AFO | title | shown by / status |", "|---|---|---|"]
        for row_spec, afo, title in rows:
            if row_spec != spec:
                continue
            key = ID.match(afo).group(1)  # type: ignore[union-attr]
            listed.add(key)
            status = "<br>".join(tests[key]) if key in tests else STATUS.get(key, DEFAULT[spec])
            out.append(f"| {afo} | {title} | {status} |")
        out.append("")
    out += [
        "## Cited in the digest, not in the checklist",
        "",
        "| requirement | digest section | shown by / status |",
        "|---|---|---|",
    ]
    for key in sorted(cited, key=lambda k: int(k[2:])):
        if key in listed:
            continue
        written, section = cited[key]
        status = "<br>".join(tests[key]) if key in tests else STATUS.get(key, DEFAULT["digest"])
        out.append(f"| {written} | {section} | {status} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    (ROOT / "docs/conformance.md").write_text(render(args.shared), encoding="utf-8")


if __name__ == "__main__":
    main()

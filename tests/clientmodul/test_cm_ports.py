"""The Clientmodul depends only on its ports (issue 14): no module of ``kim_appliance.clientmodul``
imports the Konnektor, the directory, the Fachdienst or the in-process adapters, so a change
inside them cannot ripple into the Clientmodul, and the two meet on the wire only."""

from __future__ import annotations

import ast
from pathlib import Path

import kim_appliance.clientmodul

PACKAGE = Path(kim_appliance.clientmodul.__file__).parent
FORBIDDEN = (
    "kim_appliance.konnektor",
    "kim_appliance.directory",
    "kim_appliance.fachdienst",
    "kim_appliance.adapters",
    "kim_appliance.store",
    "kim_appliance.web",
    "kim_appliance.appliance",
)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):  # also imports inside functions
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_clientmodul_imports_nothing_of_the_components() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20  # the package and its network adapters were found
    offending = {
        str(path.relative_to(PACKAGE)): sorted(
            name for name in imports_of(path) if name.startswith(FORBIDDEN)
        )
        for path in modules
    }
    assert {k: v for k, v in offending.items() if v} == {}


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The scan itself: an import of the Konnektor, also inside a function, is found."""
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from kim_appliance.konnektor.cards import CardKey\n    return CardKey\n"
    )
    assert "kim_appliance.konnektor.cards" in imports_of(module)

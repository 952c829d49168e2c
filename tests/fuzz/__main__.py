"""``python -m tests.fuzz TARGET|all --seconds N``: fuzz one target (or each) for N seconds.

Prints inputs/s, total inputs, crashes and the slowest input per target; crashers and inputs
slower than 100 ms are saved under ``--out`` (default ``fuzz-findings/``), one file per
distinct crash with its traceback next to it. ``--engine atheris`` (the default when atheris is
installed) is coverage-guided; ``--engine mutator`` needs nothing but the standard library.
Exit status 1 when anything crashed or was slow. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .engine import Stats, atheris_available, atheris_child, run_atheris, run_mutator


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["_atheris-child"]:
        return _child(args[1:])
    from .targets import TARGETS

    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("target", choices=[*TARGETS, "all", "list"])
    parser.add_argument("--seconds", type=float, default=60.0, help="per target")
    parser.add_argument("--engine", choices=["auto", "atheris", "mutator"], default="auto")
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"))
    parser.add_argument("--seed", type=int, default=None, help="mutator: random seed")
    parser.add_argument("--keep-corpus", type=Path, default=None,
                        help="atheris: keep the grown corpus in this directory")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="append stats as JSON lines")
    options = parser.parse_args(args)
    if options.target == "list":
        for target in TARGETS.values():
            print(f"{target.name:18} {target.summary}")
        return 0
    engine = options.engine
    if engine == "auto":
        engine = "atheris" if atheris_available() else "mutator"
    names = list(TARGETS) if options.target == "all" else [options.target]
    failed = False
    for name in names:
        target = TARGETS[name]
        if engine == "atheris":
            stats = run_atheris(target, options.seconds, options.out, options.keep_corpus)
        else:
            stats = run_mutator(target, options.seconds, options.out, seed=options.seed)
        print("\n".join(stats.lines()), flush=True)
        if options.json:
            with options.json.open("a") as f:
                f.write(json.dumps(asdict(stats)) + "\n")
        failed |= bool(stats.crashes or stats.slow)
    return 1 if failed else 0


def _child(args: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--stats", type=Path)
    parser.add_argument("--corpus", type=Path)
    options = parser.parse_args(args)
    import atheris

    # coverage for the package under test only: instrumenting every loaded module (lxml,
    # cryptography, hypothesis ...) takes longer than most runs
    with atheris.instrument_imports(include=["kim_appliance"]):
        from .targets import TARGETS

    atheris_child(
        TARGETS[options.target], options.seconds, options.out, options.stats, options.corpus
    )
    return 0  # not reached: libFuzzer ends the process


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["Stats", "main"]

"""The long-run fuzz drivers behind ``python -m tests.fuzz``: a mutation loop, and atheris.

:func:`run_mutator` needs nothing but the standard library: it takes the target's fixed corpus,
mutates a random entry (:mod:`.mutate`), runs it (:func:`.target.run_one`) and keeps going for
the given number of seconds; every crash and every slow input is saved (one file per distinct
crash signature, the smallest input seen for it) and counted. :func:`run_atheris` does the same
under atheris (libFuzzer, coverage-guided) when it is installed; libFuzzer ends the process with
``_exit``, so that driver runs in a child process and reports through a JSON stats file. Both
print inputs/s, total inputs, crashes and the slowest input.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .mutate import mutate
from .target import SLOW_MS, Outcome, Target, run_one, save_input


@dataclass
class Stats:
    target: str
    engine: str
    inputs: int = 0
    seconds: float = 0.0
    declared: int = 0
    crashes: dict[str, str] = field(default_factory=dict)  # signature -> saved file
    crash_inputs: int = 0
    slow: dict[str, float] = field(default_factory=dict)  # saved file -> ms
    slowest_ms: float = 0.0
    slowest_file: str = ""

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        out = [
            f"{self.target} ({self.engine}): {self.inputs} inputs in {self.seconds:.0f} s "
            f"({self.rate:.0f}/s), {self.declared} refused with declared errors, "
            f"{len(self.crashes)} distinct crashes ({self.crash_inputs} inputs), "
            f"{len(self.slow)} inputs over {SLOW_MS:.0f} ms",
            f"  slowest input: {self.slowest_ms:.1f} ms {self.slowest_file}".rstrip(),
        ]
        out += [f"  CRASH {sig}: {path}" for sig, path in self.crashes.items()]
        out += [f"  SLOW {ms:.0f} ms: {path}" for path, ms in self.slow.items()]
        return out


class _Recorder:
    """Counts outcomes and saves crashers and slow inputs for one target."""

    def __init__(self, target: Target, engine: str, out_dir: Path) -> None:
        self.target = target
        self.stats = Stats(target.name, engine)
        self.out_dir = out_dir / target.name
        self._crash_sizes: dict[str, int] = {}
        self._slowest = b""

    def record(self, data: bytes, outcome: Outcome) -> None:
        stats = self.stats
        stats.inputs += 1
        ms = outcome.seconds * 1000
        if outcome.kind == "declared":
            stats.declared += 1
        if outcome.crashed:
            stats.crash_inputs += 1
            signature = outcome.signature()
            if len(data) < self._crash_sizes.get(signature, 1 << 62):
                old = stats.crashes.get(signature)
                if old:
                    Path(old).unlink(missing_ok=True)
                path = save_input(self.out_dir, "crash", data)
                path.with_suffix(".txt").write_text(outcome.trace)
                stats.crashes[signature] = str(path)
                self._crash_sizes[signature] = len(data)
        elif ms > SLOW_MS:
            path = save_input(self.out_dir, "slow", data)
            stats.slow[str(path)] = ms
        if ms > stats.slowest_ms:
            stats.slowest_ms = ms
            self._slowest = data

    def finish(self, seconds: float) -> Stats:
        self.stats.seconds = seconds
        if self._slowest:
            self.stats.slowest_file = str(save_input(self.out_dir, "slowest", self._slowest))
        return self.stats


def run_mutator(target: Target, seconds: float, out_dir: Path, *, seed: int | None = None) -> Stats:
    """Mutate the target's corpus for ``seconds``; crashers and slow inputs go to
    ``out_dir/<target>/``."""
    rng = random.Random(seed)
    seeds = [data for _, data in target.seeds()] or [b""]
    recorder = _Recorder(target, "mutator", out_dir)
    pool = list(seeds)  # the corpus plus inputs that were refused late (a cheap depth signal)
    for data in seeds:
        recorder.record(data, run_one(target, data))
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(64):
            base = rng.choice(pool)
            data = mutate(base, rng, seeds=seeds, dictionary=target.dictionary,
                          max_len=target.max_len)  # fmt: skip
            outcome = run_one(target, data)
            recorder.record(data, outcome)
            if outcome.kind == "ok" and len(pool) < 4096 and rng.random() < 0.01:
                pool.append(data)
    return recorder.finish(time.perf_counter() - start)


# --- atheris -----------------------------------------------------------------------------------


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(
    target: Target, seconds: float, out_dir: Path, keep_corpus: Path | None = None
) -> Stats:
    """Run the target under atheris in a child process for ``seconds``. libFuzzer adds the
    inputs that reach new code to its working corpus: a temporary one, or ``keep_corpus``."""
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target.name}-") as work:
        corpus = keep_corpus / target.name if keep_corpus else Path(work) / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        for name, data in target.seeds():
            (corpus / name).write_bytes(data)
        stats_file = Path(work) / "stats.json"
        command = [
            sys.executable, "-m", "tests.fuzz", "_atheris-child", target.name,
            "--seconds", str(seconds), "--out", str(out_dir), "--stats", str(stats_file),
            "--corpus", str(corpus),
        ]  # fmt: skip
        root = Path(__file__).resolve().parents[2]
        subprocess.run(command, cwd=root, check=False, stdout=subprocess.DEVNULL)
        if not stats_file.exists():
            raise RuntimeError(f"atheris child for {target.name} wrote no stats")
        values = json.loads(stats_file.read_text())
        return Stats(**values)


def atheris_child(
    target: Target, seconds: float, out_dir: Path, stats_file: Path, corpus: Path
) -> None:
    """The child: libFuzzer drives ``target``; stats are written every second and at the
    end, after which the process leaves with ``os._exit`` (libFuzzer never returns)."""
    import atheris

    recorder = _Recorder(target, "atheris", out_dir)
    target.runner  # noqa: B018 (build the fixtures before timing)
    start = time.perf_counter()
    last_write = [start]

    def write_stats() -> None:
        now = time.perf_counter()
        stats = recorder.finish(now - start)
        tmp = stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(stats)))
        tmp.replace(stats_file)
        last_write[0] = now

    def test_one_input(data: bytes) -> None:
        recorder.record(data, run_one(target, data))
        now = time.perf_counter()
        if now - start >= seconds:
            write_stats()
            sys.stdout.flush()
            os._exit(0)
        if now - last_write[0] >= 1.0:
            write_stats()

    args = [
        sys.argv[0], str(corpus), f"-max_len={target.max_len}", "-timeout=60",
        "-rss_limit_mb=4096", "-print_final_stats=0", "-close_fd_mask=1",
    ]  # fmt: skip
    if target.dictionary:
        dictionary = stats_file.parent / "dictionary"
        dictionary.write_text("".join(_dictionary_line(t) for t in target.dictionary))
        args.append(f"-dict={dictionary}")
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


def _dictionary_line(token: bytes) -> str:
    """One libFuzzer dictionary entry: the token in quotes, every byte as ``\\xNN``."""
    return '"' + "".join(f"\\x{b:02x}" for b in token) + '"\n'

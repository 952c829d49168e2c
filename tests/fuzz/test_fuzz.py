"""Every parser that reads a client's or a peer's bytes, fuzzed in CI (issue 11 items 3 and 4).

For each target of :mod:`.targets`: every file of its fixed corpus (seeds from real dialogues
and messages, and the crashers found so far as regression files), then a bounded budget of
inputs that hypothesis draws as mutations of those seeds (``KIM_CI=1`` replays the same ones).
A test fails when the parser raises anything but its declared errors, when its answer breaks
its protocol, or when one input takes more than 100 ms (best of three runs). The input of a
failure is saved (``KIM_FUZZ_FINDINGS`` or pytest's temporary directory) and its path is in the
failure message; ``python -m tests.fuzz TARGET --seconds N`` fuzzes one target for longer.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .mutate import OPERATORS, Mutation, apply
from .target import SLOW_MS, Outcome, Target, run_one, save_input
from .targets import TARGETS

#: hypothesis examples per target in CI: the cheap parsers get more, those that decrypt, verify
#: or validate an XSD fewer (all together stay well under a minute on two cores)
EXAMPLES = {
    "cms_enveloped": 600,
    "cms_repair": 400,
    "cms_signed": 800,
    "jwt": 800,
    "mime_unseal": 800,
    "soap": 600,
}
DEFAULT_EXAMPLES = 1500

MUTATIONS = st.lists(
    st.builds(
        Mutation,
        st.sampled_from(OPERATORS),
        st.integers(0, 1 << 20),
        st.integers(0, 1 << 16),
        st.binary(max_size=16),
    ),
    min_size=1,
    max_size=8,
)


def _findings(tmp_path: Path) -> Path:
    return Path(os.environ.get("KIM_FUZZ_FINDINGS") or tmp_path / "fuzz-findings")


def _problem(target: Target, data: bytes, outcome: Outcome, where: Path) -> str | None:
    """What is wrong with ``outcome`` (with the saved input), or None."""
    ms = outcome.seconds * 1000
    if outcome.crashed:
        path = save_input(where / target.name, "crash", data)
        return f"{target.name}: {outcome.signature()} (input saved: {path})\n{outcome.trace}"
    if ms > SLOW_MS:
        path = save_input(where / target.name, "slow", data)
        return f"{target.name}: {ms:.0f} ms, over {SLOW_MS:.0f} ms (input saved: {path})"
    return None


def _warm(target: Target, seeds: list[tuple[str, bytes]]) -> None:
    """Build the fixtures and load what loads once (XSDs, caches) outside the timing."""
    with contextlib.suppress(Exception):  # judged below, with timing
        target.runner(seeds[0][1] if seeds else b"")


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus(name: str, tmp_path: Path) -> None:
    """Each corpus file (seeds and regression crashers) gives only declared errors, fast."""
    target = TARGETS[name]
    seeds = target.seeds()
    assert seeds, f"{name}: corpus/{name}/ is empty (python -m tests.fuzz.make_corpus {name})"
    _warm(target, seeds)
    problems = []
    for file_name, data in seeds:
        problem = _problem(target, data, run_one(target, data), _findings(tmp_path))
        if problem:
            problems.append(f"corpus/{name}/{file_name}: {problem}")
    assert not problems, "\n\n".join(problems)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutations(name: str, tmp_path: Path) -> None:
    """Mutations of the corpus drawn by hypothesis give only declared errors, fast."""
    target = TARGETS[name]
    seeds = [data for _, data in target.seeds()]
    _warm(target, target.seeds())
    where = _findings(tmp_path)

    @settings(
        max_examples=EXAMPLES.get(name, DEFAULT_EXAMPLES),
        deadline=None,  # timed by run_one, best of three
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(index=st.integers(0, len(seeds) - 1), mutations=MUTATIONS)
    def check(index: int, mutations: list[Mutation]) -> None:
        data = seeds[index]
        for mutation in mutations:
            data = apply(data, mutation, seeds=seeds, dictionary=target.dictionary,
                         max_len=target.max_len)  # fmt: skip
        problem = _problem(target, data, run_one(target, data), where)
        assert problem is None, problem

    check()


def test_the_issue_crashers_are_in_the_corpus() -> None:
    """Issue 11's reproductions are regression files of their targets."""
    expected = {
        "ldap_ber": "crash-octet-string-8-octet-length",
        "ldap_server": "crash-octet-string-8-octet-length",
        "smtp_server": "crash-mail-param-nul",
        "pop3_server": "crash-auth-plain-crlf",
        "json_body": "crash-deep-nesting",
        "cms_signed": "crash-poison-unknown-key-algorithm",
        "mime_unseal": "crash-poison-unknown-key-algorithm-binary",
    }
    for name, file_name in expected.items():
        assert file_name in dict(TARGETS[name].seeds()), f"{name}/{file_name}"

"""Fuzzing of every parser that reads what a client or a peer sends (issue 11).

One target per parser (:mod:`.targets`), a fixed corpus per target in ``corpus/<target>/``
(seeds from real dialogues and messages, and every crasher ever found, as a regression file),
``test_fuzz.py`` running all of them in CI on the corpus plus a bounded hypothesis budget, and
``python -m tests.fuzz TARGET --seconds N`` for long runs (atheris when installed, otherwise a
mutation loop). A target fails an input when the parser raises anything but its declared
errors, when its answer breaks its protocol, or when one input takes longer than 100 ms.
"""

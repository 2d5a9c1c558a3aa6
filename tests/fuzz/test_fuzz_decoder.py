"""Fuzzing the worker's reading of raw message bytes (decoder_target.py) for a bounded time.

Hypothesis runs rounds of ``ROUND_EXAMPLES`` generated bodies, each round on a fresh
seed, until ``FUZZ_SECONDS`` of wall time have passed: every body must decode or raise
celeriac's own MessageError, and the worker's checks must give a verdict, never raise.
A body that takes longer than ``DEADLINE_MS`` to check fails the run (a hang). A failure
is shrunk by hypothesis and printed as the smallest body that shows it; a body that
never returns is caught by the test's timeout.

``FUZZ_SECONDS`` overrides the time for a longer run (docs/security.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from decoder_target import Quiet, Target, bodies
from hypothesis import HealthCheck, Phase, given, settings

FUZZ_SECONDS = 60.0  # the CI run: wall time, in total
ROUND_EXAMPLES = 500  # bodies per hypothesis run (each run draws a fresh seed)
DEADLINE_MS = 2000  # one body checked in longer than this is a hang


def _seconds() -> float:
    return float(os.environ.get("FUZZ_SECONDS", FUZZ_SECONDS))


@pytest.fixture
def target() -> Iterator[Target]:
    target = Target()
    with Quiet():
        yield target
    target.close()


# Its own clock ends it; the timeout catches a body that never returns at all (hypothesis'
# deadline only judges a body that did return).
@pytest.mark.timeout(_seconds() + 120)
def test_random_and_mutated_bodies_decode_or_raise_celeriacs_own_errors(
        target: Target) -> None:
    # Generate and shrink only: the explain phase traces every line it re-runs, which
    # turned one failing body into a run that outlived the test's timeout.
    @settings(max_examples=ROUND_EXAMPLES, deadline=DEADLINE_MS, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True,
              phases=(Phase.generate, Phase.shrink))
    @given(bodies)
    def one_round(body: bytes) -> None:
        target.check(body)

    seconds = _seconds()
    started = time.monotonic()
    rounds = 0
    while time.monotonic() - started < seconds:
        one_round()
        rounds += 1
    elapsed = time.monotonic() - started
    print(f"\nfuzzed {target.examples:,} bodies in {elapsed:.0f} s ({rounds} rounds): "
          f"{target.decoded:,} decoded as messages, {target.runnable:,} runnable calls")
    # Then the inputs reached every layer: frames, envelopes, and calls that would run
    assert target.decoded > 0
    assert target.runnable > 0

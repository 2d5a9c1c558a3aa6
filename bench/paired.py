"""Paired drains for what a feature costs: W2 with and without it, in one run.

Each pair runs both sides, alternating which goes first, so that a slow drift in the
load of a shared machine falls on both sides alike. The report gives the medians, the
best pair (least disturbed by other load), and the CPU the worker used from its start
to its exit (what other load disturbs least), per task and in percent. Used by
``bench.signing_cost`` and ``bench.metrics_cost``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Drain:
    """One drain's numbers."""

    rate: float  # tasks/s
    worker_cpu: float  # CPU seconds of the worker, start to exit
    server_cpu: float | None = None  # CPU seconds of the broker's server meanwhile


def alternate(runs: int, one_drain: Callable[[bool], Drain],
              label: Callable[[bool], str]) -> dict[bool, list[Drain]]:
    """``runs`` pairs of ``one_drain(False)`` and ``one_drain(True)``, printing each."""
    drains: dict[bool, list[Drain]] = {False: [], True: []}
    for run in range(runs):
        for on in ((False, True) if run % 2 == 0 else (True, False)):
            drained = one_drain(on)
            drains[on].append(drained)
            server = ("" if drained.server_cpu is None
                      else f", server CPU {drained.server_cpu:.2f} s")
            print(f"  run {run + 1}: W2 {label(on)}: {drained.rate:,.0f} tasks/s, "
                  f"worker CPU {drained.worker_cpu:.2f} s{server}", flush=True)
    return drains


def report(drains: dict[bool, list[Drain]], label: Callable[[bool], str], tasks: int,
           goal_percent: float) -> float:
    """Print the comparison; return the cost in percent of the median rate."""
    rates = {on: [d.rate for d in drains[on]] for on in (False, True)}
    plain, measured = statistics.median(rates[False]), statistics.median(rates[True])
    cost = (plain - measured) / plain * 100
    print(f"W2 drain, Redis, median of {len(rates[False])}: {label(False)} {plain:,.0f} "
          f"tasks/s, {label(True)} {measured:,.0f} tasks/s: cost {cost:+.1f}% "
          f"(goal <= {goal_percent:.0f}%: {'met' if cost <= goal_percent else 'MISSED'})")
    best_plain, best_measured = max(rates[False]), max(rates[True])
    print(f"  best runs (least disturbed by other load): {label(False)} {best_plain:,.0f}, "
          f"{label(True)} {best_measured:,.0f}: cost "
          f"{(best_plain - best_measured) / best_plain * 100:+.1f}%")
    cpu = {on: statistics.median(d.worker_cpu for d in drains[on]) for on in (False, True)}
    print(f"  worker CPU per drain (median): {label(False)} {cpu[False]:.2f} s, "
          f"{label(True)} {cpu[True]:.2f} s: {(cpu[True] - cpu[False]) / tasks * 1e6:+.1f} us "
          f"per task ({(cpu[True] - cpu[False]) / cpu[False] * 100:+.1f}%)")
    servers = {on: [d.server_cpu for d in drains[on] if d.server_cpu is not None]
               for on in (False, True)}
    if servers[False] and servers[True]:
        plain_server = statistics.median(servers[False])
        measured_server = statistics.median(servers[True])
        print(f"  server CPU per drain (median): {label(False)} {plain_server:.2f} s, "
              f"{label(True)} {measured_server:.2f} s: "
              f"{(measured_server - plain_server) / tasks * 1e6:+.1f} us per task")
    for on in (False, True):
        print(f"  {label(on)}:", ", ".join(f"{r:,.0f}" for r in rates[on]))
    return cost

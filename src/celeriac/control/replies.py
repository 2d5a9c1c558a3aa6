"""One Celery-shaped answer per node, from the answers of its processes.

Every process of a node answers a process command with its own data (``commands``), and
the node's service answers the node commands; a client wants what Celery gives:
``{node: reply}``. The merge of one node's answers depends on the command:

- lists of tasks (``active``, ``reserved``, ``scheduled``): joined, in process order;
- lists of names (``registered``, ``revoked``): their sorted union;
- ``active_queues``: the union by queue name;
- ``stats``: counters summed (``total`` per task name, ``rusage`` times),
  ``pool.processes`` the processes' pids, ``max-concurrency`` the node's slots,
  ``uptime`` the longest;
- anything else (``ping``, ``conf``, ``{"ok": ...}``): the first answer; an error from
  any process wins, so that a command that failed somewhere never looks done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from celeriac.control.mailbox import Reply

Merge = Callable[[list[Any]], Any]


def by_node(command: str, replies: Iterable[Reply]) -> dict[str, Any]:
    """``{node: merged reply}`` over ``replies`` (those of one request)."""
    grouped: dict[str, list[Reply]] = {}
    for reply in replies:
        if reply.value is not None:  # (None: a node saying which processes answer)
            grouped.setdefault(reply.node, []).append(reply)
    merged: dict[str, Any] = {}
    for node, answers in grouped.items():
        # The node's own answer first, then its processes in index order.
        answers.sort(key=lambda r: -1 if r.process is None else r.process)
        failed = [reply.value for reply in answers if reply.failed]
        if failed:
            merged[node] = failed[0]
        else:
            merged[node] = MERGES.get(command, _first)([reply.value for reply in answers])
    return merged


def _first(values: list[Any]) -> Any:
    return values[0]


def _joined(values: list[Any]) -> Any:
    return [item for value in values if isinstance(value, list) for item in value]


def _union(values: list[Any]) -> Any:
    return sorted({item for value in values if isinstance(value, list) for item in value})


def _queues(values: list[Any]) -> Any:
    seen: dict[str, Any] = {}
    for value in values:
        for queue in value if isinstance(value, list) else []:
            seen.setdefault(str(queue.get("name")), queue)
    return list(seen.values())


def _stats(values: list[Any]) -> Any:
    parts = [value for value in values if isinstance(value, dict)]
    if not parts:
        return values[0]
    merged = dict(parts[0])
    total: dict[str, int] = {}
    for part in parts:
        for name, count in part.get("total", {}).items():
            total[name] = total.get(name, 0) + int(count)
    merged["total"] = total
    for key in ("processed", "succeeded", "failed", "retried", "dead_lettered",
                "prefetch_count"):
        merged[key] = sum(int(part.get(key) or 0) for part in parts)
    merged["uptime"] = max(float(part.get("uptime") or 0) for part in parts)
    pools = [part.get("pool") or {} for part in parts]
    merged["pool"] = {**pools[0],
                      "max-concurrency": sum(int(p.get("max-concurrency") or 0) for p in pools),
                      "processes": [pid for p in pools for pid in p.get("processes", [])]}
    usages = [part.get("rusage") or {} for part in parts]
    merged["rusage"] = {key: (max if key == "maxrss" else sum)(u.get(key) or 0 for u in usages)
                        for key in usages[0]}
    merged.pop("process_index", None)
    return merged


MERGES: dict[str, Merge] = {
    "active": _joined,
    "reserved": _joined,
    "scheduled": _joined,
    "registered": _union,
    "revoked": _union,
    "active_queues": _queues,
    "stats": _stats,
}

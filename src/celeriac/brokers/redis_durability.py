"""What a Redis server may lose, read at connect, and noticing when it lost it.

Redis keeps a queue only as well as the server is configured to: without persistence
(no append-only file, no RDB snapshots) a restart empties it; with only RDB snapshots
a crash loses what changed since the last one; with a ``maxmemory`` limit and an
``allkeys-*`` eviction policy the server deletes keys when memory runs short, streams of
waiting tasks included (``volatile-*`` policies evict only keys with a TTL: results,
never the broker's keys). celeriac cannot change that, but it must never let it pass in
silence:

- ``check_server``: at connect, the broker and the result backend read the server's
  settings (``CONFIG GET save / appendonly / maxmemory / maxmemory-policy``; where
  CONFIG is renamed or forbidden, ``INFO persistence`` and ``INFO memory``, and the
  warning says what could not be checked) and log one WARNING naming each risk to their
  own data. With ``require_noeviction`` they refuse to start (``*Refused``) when the
  server could evict their keys, or when that could not be checked.
- ``LossWatch``: the broker's record of the server's *epoch*, a random token kept under
  ``<prefix>epoch`` and read by every fetch and lease extension. A token that changed
  (or vanished) means the server lost the data it held for this prefix: it restarted
  without persistence, was flushed, or evicted the key. The broker then logs one ERROR
  naming the data loss, the server's run id before and after, and how many leased
  messages this process lost (see ``RedisBroker``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.exceptions as redis_errors

from celeriac.errors import CeleriacError

logger = logging.getLogger("celeriac.brokers.redis")

DOCS = "docs/reliability.md"


@dataclass(frozen=True)
class ServerSettings:
    """The durability settings of a Redis server; None where they could not be read."""

    appendonly: bool | None
    save: str | None  # the RDB schedule ("" for none)
    maxmemory: int | None
    policy: str | None
    run_id: str | None
    unreadable: str | None = None  # why CONFIG GET could not be used, if it could not


async def read_settings(execute: Callable[..., Awaitable[Any]]) -> ServerSettings:
    """Read the server's persistence and eviction settings (``execute``: a command).

    CONFIG GET first; where it is renamed, disabled or not permitted (managed services,
    ACLs), INFO, which has everything but the RDB schedule; where INFO is refused too,
    nothing (the caller then says it could not check).
    """
    try:
        run_id = _info(await execute("INFO", "server")).get("run_id")
    except redis_errors.ResponseError as exc:
        return ServerSettings(None, None, None, None, None,
                              f"neither CONFIG GET nor INFO is available to this client "
                              f"({exc})")
    try:
        values: dict[str, str] = {}
        for name in ("save", "appendonly", "maxmemory", "maxmemory-policy"):
            # One name per call: Redis before 7 takes a single pattern.
            reply = await execute("CONFIG", "GET", name)
            values.update(_config_pairs(reply))
        return ServerSettings(values.get("appendonly") == "yes", values.get("save"),
                              int(values.get("maxmemory", "0")),
                              values.get("maxmemory-policy"), run_id)
    except redis_errors.ResponseError as exc:  # renamed, disabled or not permitted
        why = f"CONFIG GET is not available to this client ({exc})"
    try:
        info = {**_info(await execute("INFO", "persistence")),
                **_info(await execute("INFO", "memory"))}
    except redis_errors.ResponseError as exc:
        return ServerSettings(None, None, None, None, run_id, f"{why}; nor is INFO ({exc})")
    aof = info.get("aof_enabled")
    maxmemory = info.get("maxmemory")
    return ServerSettings(None if aof is None else aof == "1", None,
                          None if maxmemory is None else int(maxmemory),
                          info.get("maxmemory_policy"), run_id, why)


def risks(settings: ServerSettings, holds: str, expiring: bool) -> tuple[list[str], str | None]:
    """The ways ``holds`` (what this client keeps there) can be lost, and the one that
    is eviction (or that eviction could not be ruled out), if any.

    ``expiring``: this client's keys have a TTL (results), so ``volatile-*`` policies
    may evict them too.
    """
    found: list[str] = []
    if settings.appendonly is None:
        found.append(f"persistence could not be checked ({settings.unreadable}): "
                     f"{holds} may be lost when the server restarts")
    elif not settings.appendonly:
        if settings.save == "":
            found.append(f"the server has no persistence (appendonly no, save \"\"): "
                         f"all {holds} are lost when it restarts")
        elif settings.save is None:
            found.append(f"the append-only file is off and the RDB schedule could not be "
                         f"read ({settings.unreadable}): {holds} changed since the last "
                         "snapshot, if any, are lost if the server crashes or restarts")
        else:
            found.append(f"the server keeps RDB snapshots only (appendonly no, save "
                         f"\"{settings.save}\"): {holds} changed since the last snapshot "
                         "are lost if it crashes or is killed")
    evicting = None
    policy = settings.policy
    if settings.maxmemory is None or policy is None:
        evicting = (f"the eviction policy could not be checked ({settings.unreadable}): "
                    f"{holds} may be evicted")
    elif settings.maxmemory > 0 and (policy.startswith("allkeys")
                                     or (expiring and policy.startswith("volatile"))):
        evicting = (f"maxmemory is {settings.maxmemory} bytes with maxmemory-policy "
                    f"{policy}: when memory runs short the server deletes keys, "
                    f"{holds} included")
    if evicting is not None:
        found.append(evicting)
    return found, evicting


async def check_server(execute: Callable[..., Awaitable[Any]], url: str, role: str,
                       holds: str, expiring: bool, require_noeviction: bool,
                       refused: type[CeleriacError]) -> ServerSettings:
    """Warn about (or refuse, with ``require_noeviction``) what the server may lose."""
    settings = await read_settings(execute)
    found, evicting = risks(settings, holds, expiring)
    where = server_name(url)
    if require_noeviction and evicting is not None:
        raise refused(f"Redis {role} at {where}: require_noeviction is set, but "
                      f"{evicting}. Set maxmemory-policy "
                      f"noeviction (or volatile-* for the broker), or drop "
                      f"require_noeviction ({DOCS})")
    if found:
        logger.warning("Redis %s at %s: %s can be lost: %s. For %s that survive restarts "
                       "and memory pressure, run the server with appendonly yes and "
                       "maxmemory-policy noeviction (%s)", role, where, holds,
                       "; ".join(found), holds, DOCS)
    return settings


def log_data_lost(where: str, prefix: str, before: str | None, after: str | None,
                  count: int, queues: Sequence[str]) -> None:
    """The ERROR for a changed epoch: what was lost, why (by the run ids), how many leases."""
    if before and after and before != after:
        cause = (f"the server restarted without its data (run id {before} -> {after}): "
                 "it has no persistence, or lost its files")
    else:
        cause = (f"same server process (run id {after or 'unknown'}): its keys were "
                 "deleted (FLUSHALL, FLUSHDB, DEL) or evicted")
    logger.error(
        "Redis data loss at %s: the data of key prefix %r is gone, %s. This worker "
        "process held %d leased message(s) that are no longer on the server: it "
        "finishes them from memory, but they are lost if it stops first. Every task "
        "that was waiting or scheduled in queue(s) %s is lost (how many cannot be "
        "known). Check the server's persistence (appendonly yes) and eviction "
        "(maxmemory-policy noeviction) settings: %s", where, prefix, cause, count,
        ", ".join(repr(q) for q in queues), DOCS)


def log_vanished(where: str, streams: Sequence[str], count: int) -> None:
    """The ERROR for streams or groups gone one by one (the epoch unchanged): noticed by
    a lease extension (with the leases held in them) or by the blocking read."""
    logger.error(
        "Redis data loss at %s: stream(s) %s or their consumer group vanished (deleted "
        "or evicted) while this worker process held %d leased message(s) in them: it "
        "finishes them from memory, but they are lost if it stops first, and every "
        "task waiting in those streams is lost. Check the server's eviction "
        "(maxmemory-policy noeviction) settings: %s", where, ", ".join(streams), count,
        DOCS)


def server_name(url: str) -> str:
    """host:port/db of a Redis URL, without credentials (for log lines); for a
    ``sentinel://`` URL, the sentinels asked for the master."""
    if url.startswith("sentinel://"):
        hosts = [urlsplit(part.strip()) for part in url.partition("?")[0].split(";")]
        db = next((p.path.strip("/") for p in hosts if p.path.strip("/")), "0")
        names = ",".join(f"{p.hostname}:{p.port or 26379}" for p in hosts)
        return f"the master of sentinels {names}/{db}"
    parts = urlsplit(url)
    db = parts.path.lstrip("/") or "0"
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{db}"


def _config_pairs(reply: Any) -> dict[str, str]:
    """CONFIG GET's reply (a flat list in RESP2, a map in RESP3) as text."""
    if isinstance(reply, dict):
        items = list(reply.items())
    else:
        items = list(zip(reply[::2], reply[1::2], strict=True))
    return {_text(k): _text(v) for k, v in items}


def _info(reply: Any) -> dict[str, str]:
    """INFO's reply (parsed by redis-py into a dict, or raw text) as text values."""
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    found = {}
    for line in _text(reply).splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            found[name.strip()] = value.strip()
    return found


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class LossWatch:
    """One broker object's view of the server's epoch and of the leases it handed out.

    ``leased``: receipts fetched and not yet settled (acked, requeued, dead-lettered or
    reported lost to another worker). When the data is lost they become ``written_off``:
    the server no longer has them, so nobody else can be delivered them, and the
    worker that holds them in memory may still finish them (``extend`` reports them as
    held) instead of dropping them as taken over.
    """

    def __init__(self) -> None:
        self.epoch: bytes | None = None  # the token last read from the server
        self.candidate = _token()  # what a script stores when the key is missing
        self.run_id: str | None = None
        self.leased: set[Any] = set()
        self.written_off: set[Any] = set()

    def seen(self, token: bytes) -> bool:
        """Record the epoch a script read; True when it changed: the data was lost."""
        if token == self.candidate:
            # Stored by this object: the next candidate must be new, or a second loss
            # would store the same token again and go unnoticed.
            self.candidate = _token()
        known, self.epoch = self.epoch, token
        return known is not None and token != known

    def write_off(self, receipts: set[Any] | None = None) -> int:
        """Move ``receipts`` (all leased ones by default) to the written-off set."""
        gone = set(self.leased) if receipts is None else receipts & self.leased
        self.written_off |= gone
        self.leased -= gone
        return len(gone)

    def settled(self, receipts: list[Any]) -> None:
        self.leased.difference_update(receipts)
        self.written_off.difference_update(receipts)


def _token() -> bytes:
    return uuid.uuid4().hex.encode()

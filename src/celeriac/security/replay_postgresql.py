"""Replay protection's nonces in a PostgreSQL schema: the broker's, or under a broker
that keeps no state (RabbitMQ) the result backend's (``security.replay`` says what is
kept and why).

Table (component ``replay``, version 1)::

    celeriac_seen_nonces   nonce PRIMARY KEY (16 bytes), holder (a worker's token, or
                           ``done``), expires_at (Unix time: the message's validity
                           end plus ``replay.CLOCK_MARGIN``)

A batch's claim is one ``INSERT ... ON CONFLICT (nonce) DO UPDATE ... WHERE expired``:
the primary key's row locks make concurrent claims of one nonce take turns, so two
workers never both claim it, and an entry past its time counts as none. The holders of
the nonces it did not get are read next; one released or run out between the two
statements is claimed again. Entries past their time are deleted in batches by every
``PRUNE_EVERY``-th claim of a process. As on SQLite and Redis, the PostgreSQL broker
keeps delivery counts on the server, so no ``done`` marks are needed under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from celeriac.backends.postgresql import PostgreSQLBackend
from celeriac.brokers.postgresql_connection import create_schema, qualify
from celeriac.errors import BackendError, BrokerError, CeleriacError
from celeriac.security.replay import DONE, SeenNonces, kept_until
from celeriac.security.signing import Opened

SCHEMA_VERSION = 1
NOW = "extract(epoch FROM clock_timestamp())"
CREATE = (
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_seen_nonces (
        nonce bytea PRIMARY KEY,
        holder text NOT NULL,
        expires_at double precision NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS celeriac_seen_nonces_expiry "
    "ON {s}.celeriac_seen_nonces (expires_at)",
)
# The batch, one row per nonce (a nonce twice in a batch: the later validity).
BATCH = """
SELECT nonce, max(until) AS until FROM unnest(%s::bytea[], %s::double precision[])
    AS b(nonce, until) GROUP BY nonce
"""
# Claimed where no entry is kept (an entry past its time is as good as none).
CLAIM = f"""
INSERT INTO {{s}}.celeriac_seen_nonces AS old (nonce, holder, expires_at)
SELECT nonce, %s, until FROM ({BATCH}) AS batch
ON CONFLICT (nonce) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
 WHERE old.expires_at <= {NOW}
RETURNING nonce
"""
HOLDERS = f"""
SELECT nonce, holder FROM {{s}}.celeriac_seen_nonces
 WHERE nonce = ANY(%s::bytea[]) AND expires_at > {NOW}
"""
DONE_ALL = f"""
INSERT INTO {{s}}.celeriac_seen_nonces AS old (nonce, holder, expires_at)
SELECT nonce, %s, until FROM ({BATCH}) AS batch
ON CONFLICT (nonce) DO UPDATE
   SET holder = excluded.holder, expires_at = greatest(old.expires_at, excluded.expires_at)
"""
RELEASE = """
DELETE FROM {s}.celeriac_seen_nonces WHERE nonce = ANY(%s::bytea[]) AND holder = %s
"""
PRUNE = f"""
DELETE FROM {{s}}.celeriac_seen_nonces WHERE nonce IN (
    SELECT nonce FROM {{s}}.celeriac_seen_nonces WHERE expires_at <= {NOW}
     LIMIT 5000 FOR UPDATE SKIP LOCKED)
"""
PRUNE_EVERY = 64  # claims (batches) of a process between two prunes
ROUNDS = 20


class PostgreSQLSeenNonces(SeenNonces):
    """A ``celeriac_seen_nonces`` table in a broker's or backend's schema, on the owner's
    connections. A claim is one ``INSERT ... ON CONFLICT`` for the whole batch (the
    primary key's row locks: two workers never both claim a nonce), then one read of
    the holders of the nonces it did not get."""

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self._error: type[CeleriacError] = (
            BackendError if isinstance(owner, PostgreSQLBackend) else BrokerError)
        self._q = {name: qualify(sql, owner.settings.schema) for name, sql in (
            ("claim", CLAIM), ("holders", HOLDERS), ("done", DONE_ALL),
            ("release", RELEASE), ("prune", PRUNE))}
        self._ready = False
        self._claims = 0

    async def _run(self, statement: str, params: Any) -> list[tuple[Any, ...]]:
        settings = self._owner.settings
        async with self._owner._pools.connection() as conn:
            try:
                if not self._ready:
                    await create_schema(conn, settings, "replay", SCHEMA_VERSION,
                                        CREATE, self._error)
                    self._ready = True
                cursor = await conn.execute(self._q[statement], params)
                return await cursor.fetchall() if cursor.description is not None else []
            except psycopg.OperationalError:
                raise  # the pool's own error: the server is unavailable
            except psycopg.Error as exc:
                raise settings.unavailable(exc, self._error) from exc

    async def claim(self, signed: Sequence[Opened], token: str) -> list[str | None]:
        if not signed:
            return []
        self._claims += 1
        if self._claims % PRUNE_EVERY == 0:
            await self._run("prune", ())
        holders: dict[bytes, str] = {}
        mine: set[bytes] = set()
        wanted = {opened.nonce: kept_until(opened) for opened in signed}
        for _ in range(ROUNDS):
            claimed = await self._run("claim", (token, list(wanted), list(wanted.values())))
            mine.update(bytes(nonce) for nonce, in claimed)
            rest = [nonce for nonce in wanted if nonce not in mine]
            if rest:
                rows = await self._run("holders", (rest,))
                holders.update((bytes(nonce), str(holder)) for nonce, holder in rows)
            # A nonce neither claimed nor held: its entry went between the two statements.
            wanted = {nonce: until for nonce, until in wanted.items()
                      if nonce not in mine and nonce not in holders}
            if not wanted:
                break
        else:
            raise self._error(f"signed message nonce claim: no claim settled in "
                              f"{ROUNDS} rounds")
        found: list[str | None] = []
        for opened in signed:
            nonce = opened.nonce
            if nonce in mine:
                mine.discard(nonce)  # twice in one batch: the second is a copy
                found.append(None)
            else:
                found.append(holders.get(nonce, token))
        return found

    async def done(self, signed: Sequence[Opened]) -> None:
        if signed:
            await self._run("done", (DONE, [opened.nonce for opened in signed],
                                     [kept_until(opened) for opened in signed]))

    async def release(self, signed: Sequence[Opened], token: str) -> None:
        if signed:
            await self._run("release", ([opened.nonce for opened in signed], token))

"""Token buckets in the PostgreSQL broker's schema, shared by every worker of the cluster.

Tables (component ``ratelimit``, version 1), beside the broker's::

    celeriac_rate_buckets    key PRIMARY KEY, tat   next free token (Unix time), NULL: none
    celeriac_rate_overrides  key PRIMARY KEY, rate  run-time limits (control.rate_limit)

A reservation makes sure its bucket's row exists, then reads it ``FOR UPDATE`` and
writes it in one transaction: the row lock makes concurrent reservations of one key
take turns, so two workers never get the same token. The arithmetic is
``celeriac.brokers.buckets.reserve``, on the server's clock (read in the same
transaction), so workers whose clocks disagree still space their starts evenly.
"""

from __future__ import annotations

from celeriac.brokers.buckets import Grant, TokenBuckets, reserve
from celeriac.brokers.postgresql_connection import LoopPools, PgSettings, create_schema, qualify
from celeriac.errors import BrokerError, BrokerUnavailable

SCHEMA_VERSION = 1
CREATE = (
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_rate_buckets (
        key text PRIMARY KEY,
        tat double precision
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_rate_overrides (
        key text PRIMARY KEY,
        rate text NOT NULL
    )""",
)
ENSURE = "INSERT INTO {s}.celeriac_rate_buckets (key) VALUES (%s) ON CONFLICT DO NOTHING"
LOCK = """
SELECT tat, extract(epoch FROM clock_timestamp())::double precision
  FROM {s}.celeriac_rate_buckets WHERE key = %s FOR UPDATE
"""
SET_TAT = "UPDATE {s}.celeriac_rate_buckets SET tat = %s WHERE key = %s"
SET_OVERRIDE = """
INSERT INTO {s}.celeriac_rate_overrides (key, rate) VALUES (%s, %s)
ON CONFLICT (key) DO UPDATE SET rate = excluded.rate
"""
DROP_OVERRIDE = "DELETE FROM {s}.celeriac_rate_overrides WHERE key = %s"
DROP_BUCKET = "DELETE FROM {s}.celeriac_rate_buckets WHERE key = %s"
OVERRIDES = "SELECT key, rate FROM {s}.celeriac_rate_overrides"


class PostgreSQLBuckets(TokenBuckets):
    """Buckets in the schema of a ``postgresql://`` broker, on connections of their own."""

    def __init__(self, settings: PgSettings) -> None:
        self.settings = settings
        self._pools = LoopPools(settings, BrokerUnavailable)
        self._ready = False

    def _q(self, statement: str) -> str:
        return qualify(statement, self.settings.schema)

    async def _schema(self) -> None:
        if not self._ready:
            async with self._pools.connection() as conn:
                await create_schema(conn, self.settings, "ratelimit", SCHEMA_VERSION, CREATE,
                                    BrokerError)
            self._ready = True

    async def reserve(self, key: str, interval: float, horizon: float) -> Grant:
        await self._schema()
        async with self._pools.connection() as conn, conn.transaction():
            await conn.execute(self._q(ENSURE), (key,))
            cursor = await conn.execute(self._q(LOCK), (key,))
            row = await cursor.fetchone()
            assert row is not None  # made just above, in this transaction
            tat, grant = reserve(row[0], float(row[1]), interval, horizon)
            if tat is not None:
                await conn.execute(self._q(SET_TAT), (tat, key))
        return grant

    async def set_override(self, key: str, rate: str | None) -> None:
        await self._schema()
        async with self._pools.connection() as conn, conn.transaction():
            if rate is None:
                await conn.execute(self._q(DROP_OVERRIDE), (key,))
            else:
                await conn.execute(self._q(SET_OVERRIDE), (key, rate))
            await conn.execute(self._q(DROP_BUCKET), (key,))

    async def overrides(self) -> dict[str, str]:
        await self._schema()
        async with self._pools.connection() as conn:
            cursor = await conn.execute(self._q(OVERRIDES))
            return {key: rate for key, rate in await cursor.fetchall()}

    async def close(self) -> None:
        await self._pools.close()

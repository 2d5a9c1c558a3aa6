"""Beat's state stores keep one contract on memory, SQLite, Redis and PostgreSQL: the lease and its
fencing token, guarded compare-and-set of run states, dynamic entries; and each broker
puts beat's state on the right server.

Redis: DB 14 under a key prefix of this test's own, deleted afterwards. PostgreSQL: the
contract suites' database, a schema of this test's own.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import App
from celeriac.beat.store import BeatStore, MemoryStore, RunState, open_store
from celeriac.beat.store_postgresql import PostgreSQLStore
from celeriac.beat.store_redis import RedisStore
from celeriac.beat.store_sqlite import SQLiteStore
from celeriac.brokers.postgresql_connection import PgSettings
from celeriac.brokers.redis_connection import RedisSettings
from celeriac.errors import BrokerError

REDIS = "redis://127.0.0.1:6379/14"
TTL = 0.4


@pytest.fixture(params=["memory", "sqlite", "redis", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BeatStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "postgresql":
        url, options = request.getfixturevalue("pg_isolated")
        made = PostgreSQLStore(PgSettings.from_url(url, options), BrokerError)
        yield made
        made.close()
        return
    if request.param == "sqlite":
        made = SQLiteStore(f"sqlite:///{tmp_path / 'beat.db'}", BrokerError)
        yield made
        made.close()
        return
    import redis

    client = redis.Redis.from_url(REDIS, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        client.close()
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not running at {REDIS}: {exc}")
        pytest.skip(f"Redis is not running at {REDIS}")
    prefix = f"beatstore:{uuid.uuid4().hex[:10]}:"
    made = RedisStore(RedisSettings.from_options(REDIS, {"key_prefix": prefix}),
                      BrokerError)
    try:
        yield made
    finally:
        made.close()
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def _expire(store: BeatStore) -> None:
    deadline = time.monotonic() + 5
    while store.leader() is not None:
        assert time.monotonic() < deadline, "the lease never ran out"
        time.sleep(0.05)


def test_one_holder_at_a_time_and_each_new_leader_a_larger_token(store: BeatStore) -> None:
    first = store.acquire("a", TTL)
    assert first is not None
    assert store.acquire("b", TTL) is None  # a's lease still runs
    assert store.acquire("a", TTL) == first  # extending keeps the token
    leader = store.leader()
    assert leader is not None
    assert (leader.holder, leader.token) == ("a", first)
    _expire(store)
    second = store.acquire("b", TTL)
    assert second is not None
    assert second > first
    store.release("a", first)  # not a's any more: nothing happens
    assert store.acquire("a", TTL) is None
    store.release("b", second)
    third = store.acquire("a", TTL)
    assert third is not None
    assert third > second


def test_run_states_change_only_by_compare_and_set_under_the_lease(
        store: BeatStore) -> None:
    token = store.acquire("a", 5.0)
    assert token is not None
    lease = ("a", token)
    fresh = RunState("every 1.0s", anchor=100.0, cursor=100.0, token=token)
    assert store.swap("tick", None, fresh, lease)
    assert not store.swap("tick", None, fresh, lease)  # no longer absent
    recorded = RunState("every 1.0s", 100.0, 101.0, pending=101.0, token=token)
    assert not store.swap("tick", fresh, recorded, ("a", token + 1))  # a stale token
    assert not store.swap("tick", fresh, recorded, ("b", token))
    assert store.swap("tick", fresh, recorded, lease)
    assert not store.swap("tick", fresh, recorded, lease)  # already moved on
    assert store.states() == {"tick": recorded}
    sent = RunState("every 1.0s", 100.0, 101.0, last_due=101.0, sent_at=101.2, token=token)
    store.release("a", token)
    assert store.swap("tick", recorded, sent, None)  # a confirmation needs no lease
    assert store.states()["tick"] == sent
    assert store.swap("tick", sent, None, None)
    assert store.states() == {}


def test_paused_and_removed_entries_cannot_record_a_run(store: BeatStore) -> None:
    token = store.acquire("a", 5.0)
    assert token is not None
    lease = ("a", token)
    fresh = RunState("k", 0.0, 0.0)
    store.put_entry("dyn", b'{"task": "t"}')
    assert store.swap("dyn", None, fresh, lease, dynamic=True)
    store.set_paused("dyn", True)
    pending = RunState("k", 0.0, 1.0, pending=1.0)
    assert not store.swap("dyn", fresh, pending, lease, running=True, dynamic=True)
    store.set_paused("dyn", False)
    assert store.remove_entry("dyn")
    assert store.states() == {}  # its state went with it
    assert not store.swap("dyn", None, fresh, lease, dynamic=True)
    assert not store.remove_entry("dyn")


def test_dynamic_entries_paused_names_and_the_version(store: BeatStore) -> None:
    start = store.version()
    store.put_entry("a", b"A")
    store.put_entry("b", b"B")
    store.set_paused("a", True)
    store.set_paused("tick", True)  # static entries can be paused too
    assert store.dynamic_entries() == {"a": b"A", "b": b"B"}
    assert store.paused() == {"a", "tick"}
    store.set_paused("tick", False)
    assert store.remove_entry("a")
    assert store.dynamic_entries() == {"b": b"B"}
    assert store.paused() == set()
    assert store.version() == start + 6  # every change counted


def test_each_broker_keeps_beat_state_on_its_own_server(tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'broker.db'}"
    on_sqlite = open_store(App("t", broker=sqlite_url))
    assert isinstance(on_sqlite, SQLiteStore)
    assert str(tmp_path / "broker.db") in on_sqlite.where
    on_redis = open_store(App("t", broker=REDIS,
                              broker_transport_options={"key_prefix": "mine:"}))
    assert isinstance(on_redis, RedisStore)
    assert on_redis.lease_key == "mine:beat:lease"
    amqp = "amqp://guest:guest@127.0.0.1:5672//"
    with_sqlite_results = open_store(App("t", broker=amqp,
                                         backend=f"sqlite:///{tmp_path / 'results.db'}"))
    assert isinstance(with_sqlite_results, SQLiteStore)
    assert "results.db" in with_sqlite_results.where
    with_redis_results = open_store(App("t", broker=amqp,
                                        backend=f"{REDIS}?key_prefix=res:"))
    assert isinstance(with_redis_results, RedisStore)
    assert with_redis_results.lease_key == "res:beat:lease"
    memory_app = App("t", broker="memory://")
    assert open_store(memory_app) is open_store(memory_app)  # one per broker object
    pg = "postgresql://postgres@127.0.0.1:5432/x"
    on_pg = open_store(App("t", broker=f"{pg}?schema=mine"))
    assert isinstance(on_pg, PostgreSQLStore)
    assert on_pg.settings.schema == "mine"
    with_pg_results = open_store(App("t", broker=amqp, backend=f"{pg}?schema=res"))
    assert isinstance(with_pg_results, PostgreSQLStore)
    assert with_pg_results.settings.schema == "res"
    assert "res.celeriac_beat_" in with_pg_results.where

"""Where beat keeps its state: on the server every beat process already reaches.

Nothing lives in a local file (Celery's ``celerybeat-schedule``): any beat process, on
any machine, can take over from another. The server is the broker's own:

- ``sqlite://`` broker: tables in the broker's file;
- ``redis://`` broker: keys under the broker's ``key_prefix``, with its connection
  settings (TLS, timeouts);
- ``postgresql://`` broker: tables in the broker's schema;
- ``amqp://`` broker: RabbitMQ has no atomic read-modify-write, so the state goes to the
  result backend's server (SQLite, Redis or PostgreSQL); with ``rpc://`` results there
  is no such server and beat refuses to start, saying what to set;
- ``memory://``: this process only (tests).

(``celeriac.state_home`` makes that choice, the same for every shared-state feature.)

What is kept (the same on every server):

- the **lease**: who leads (``holder``), its **fencing token** (a number that grows with
  every new leader) and when it runs out (``beat.leader``);
- per entry, its **run state** (``RunState``, JSON): the schedule it was computed for,
  its anchor, the cursor (every run due at or before it was sent or skipped), and a
  pending run (recorded, not yet confirmed sent);
- the **dynamic entries** (``app.beat.add``), the **paused** names and a **version**
  number that grows with each change, which the leader reads a few times a second.

Every change of a run state is a compare-and-set against the state the writer read,
made together with a check that the writer's lease (holder and token) is still the
current one, in one transaction (SQLite, PostgreSQL) or one Lua script (Redis): a leader that lost
its lease can record nothing, and two writers can never both move the same cursor.

SQLite schema (component ``beat``, version 1)::

    beat_lease    id = 1, holder, token, expires (Unix time)
    beat_state    entry PRIMARY KEY, data (RunState as JSON)
    beat_entries  name PRIMARY KEY, data (Entry as JSON)
    beat_paused   name PRIMARY KEY
    beat_version  id = 1, version

Redis keys (``P`` is the key prefix)::

    P beat:lease    STRING  "<token>|<holder>", with a PX expiry: the lease
    P beat:token    STRING  the last token handed out (INCR)
    P beat:state    HASH    entry -> RunState JSON
    P beat:entries  HASH    name -> Entry JSON
    P beat:paused   SET     names
    P beat:version  STRING  INCR on every change of entries or paused names

PostgreSQL: the SQLite tables, named ``celeriac_beat_*`` (``beat.store_postgresql``).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import orjson

from celeriac.errors import BackendError, BrokerError, CeleriacError, ConfigurationError
from celeriac.state_home import WHAT_TO_SET, state_home

if TYPE_CHECKING:
    from celeriac.app import App


@dataclass(frozen=True)
class RunState:
    """What the server knows about one entry's runs (see the module docstring)."""

    key: str  # the schedule these due times belong to (Schedule.key)
    anchor: float  # when the entry was first scheduled: intervals count from it
    cursor: float  # every run due at or before this was sent or skipped
    pending: float | None = None  # a run recorded as due, its send not yet confirmed
    last_due: float | None = None  # the due time of the last run sent
    sent_at: float | None = None  # when it was sent (Unix time)
    token: int = 0  # the fencing token of the leader that wrote this

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> RunState:
        return cls(**orjson.loads(data))


@dataclass(frozen=True)
class LeaseHolder:
    """The current lease as the server has it."""

    holder: str
    token: int


class BeatStore:
    """The contract every server's store keeps (see the module docstring)."""

    where = "?"  # for log lines: which server holds the state

    # -- the lease (beat.leader) ------------------------------------------------------------

    def acquire(self, holder: str, ttl: float) -> int | None:
        """Take the lease, or extend it if ``holder`` has it: its token, or None when
        another holder's lease is still running."""
        raise NotImplementedError

    def release(self, holder: str, token: int) -> None:
        """Give the lease up now (a follower takes over at once), if still held."""
        raise NotImplementedError

    def leader(self) -> LeaseHolder | None:
        raise NotImplementedError

    # -- run states -----------------------------------------------------------------------

    def states(self) -> dict[str, RunState]:
        raise NotImplementedError

    def swap(self, entry: str, expected: RunState | None, new: RunState | None,
             lease: tuple[str, int] | None, *, running: bool = False,
             dynamic: bool = False) -> bool:
        """Replace ``entry``'s state if it is still ``expected`` (None: absent) and, when
        ``lease`` is given, that (holder, token) still holds the lease; ``new`` None
        deletes it. With ``running``, only if the entry is not paused; with ``dynamic``,
        only if it is still stored (not removed): so once ``pause`` or ``remove``
        returns, no new run of the entry is recorded. True if it was replaced."""
        raise NotImplementedError

    # -- dynamic entries ------------------------------------------------------------------

    def version(self) -> int:
        raise NotImplementedError

    def dynamic_entries(self) -> dict[str, bytes]:
        raise NotImplementedError

    def paused(self) -> set[str]:
        raise NotImplementedError

    def put_entry(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def remove_entry(self, name: str) -> bool:
        """Delete a dynamic entry (and its run state); False if there was none."""
        raise NotImplementedError

    def set_paused(self, name: str, paused: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- memory ----------------------------------------------------------------------------------


class MemoryStore(BeatStore):
    """The state in this process only: for tests and the memory:// broker."""

    where = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._lease: tuple[str, int, float] | None = None  # holder, token, expires
        self._token = 0
        self._states: dict[str, bytes] = {}
        self._entries: dict[str, bytes] = {}
        self._paused: set[str] = set()
        self._version = 0

    def acquire(self, holder: str, ttl: float) -> int | None:
        with self._lock:
            now = self.clock()
            if self._lease is not None and self._lease[2] > now and self._lease[0] != holder:
                return None
            if self._lease is None or self._lease[0] != holder or self._lease[2] <= now:
                self._token += 1
                token = self._token
            else:
                token = self._lease[1]
            self._lease = (holder, token, now + ttl)
            return token

    def release(self, holder: str, token: int) -> None:
        with self._lock:
            if self._lease is not None and self._lease[:2] == (holder, token):
                self._lease = None

    def leader(self) -> LeaseHolder | None:
        with self._lock:
            if self._lease is None or self._lease[2] <= self.clock():
                return None
            return LeaseHolder(self._lease[0], self._lease[1])

    def states(self) -> dict[str, RunState]:
        with self._lock:
            return {name: RunState.from_json(data) for name, data in self._states.items()}

    def swap(self, entry: str, expected: RunState | None, new: RunState | None,
             lease: tuple[str, int] | None, *, running: bool = False,
             dynamic: bool = False) -> bool:
        with self._lock:
            if lease is not None and (self._lease is None or self._lease[:2] != lease
                                      or self._lease[2] <= self.clock()):
                return False
            if (running and entry in self._paused) or \
                    (dynamic and entry not in self._entries):
                return False
            current = self._states.get(entry)
            if current != (None if expected is None else expected.to_json()):
                return False
            if new is None:
                self._states.pop(entry, None)
            else:
                self._states[entry] = new.to_json()
            return True

    def version(self) -> int:
        return self._version

    def dynamic_entries(self) -> dict[str, bytes]:
        with self._lock:
            return dict(self._entries)

    def paused(self) -> set[str]:
        with self._lock:
            return set(self._paused)

    def put_entry(self, name: str, data: bytes) -> None:
        with self._lock:
            self._entries[name] = data
            self._version += 1

    def remove_entry(self, name: str) -> bool:
        with self._lock:
            found = self._entries.pop(name, None) is not None
            self._paused.discard(name)
            self._states.pop(name, None)
            self._version += 1
            return found

    def set_paused(self, name: str, paused: bool) -> None:
        with self._lock:
            if paused:
                self._paused.add(name)
            else:
                self._paused.discard(name)
            self._version += 1


# -- which server ----------------------------------------------------------------------------

# memory:// brokers keep their beat state beside them, as long as the broker object lives.
_MEMORY_STORES: weakref.WeakKeyDictionary[Any, MemoryStore] = weakref.WeakKeyDictionary()
_MEMORY_LOCK = threading.Lock()


def open_store(app: App) -> BeatStore:
    """The store on the server of ``app``'s broker, else its backend's (``state_home``)."""
    home = state_home(app, "periodic tasks need a server shared by every beat process to "
                           "keep their state (the leader's lease, the runs sent)")
    owner: Any = home.owner
    error: type[CeleriacError] = BrokerError if home.on_broker else BackendError
    if home.kind == "memory":
        if not home.on_broker:  # a memory backend beside a server broker: no shared place
            raise ConfigurationError(
                f"periodic tasks with a {app.broker.scheme}:// broker keep their state on "
                f"the result backend's server, and memory:// results have none; "
                f"{WHAT_TO_SET}")
        with _MEMORY_LOCK:
            store = _MEMORY_STORES.get(owner)
            if store is None:
                store = _MEMORY_STORES[owner] = MemoryStore()
            return store
    if home.kind == "sqlite":
        from celeriac.beat.store_sqlite import SQLiteStore

        return SQLiteStore(owner.url, error)
    if home.kind == "redis":
        from celeriac.beat.store_redis import RedisStore

        return RedisStore(owner.settings, error)
    from celeriac.beat.store_postgresql import PostgreSQLStore

    return PostgreSQLStore(owner.settings, error)

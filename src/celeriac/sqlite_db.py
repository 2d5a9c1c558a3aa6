"""What the SQLite broker and result backend share: one file, opened the same way.

- ``path_from_url``: ``sqlite:///relative.db`` and ``sqlite:////absolute.db``, the
  SQLAlchemy/Celery convention.
- ``Database``: one file in WAL mode with a connection per thread (the same broker or
  backend object is used from several threads' event loops, and a ``sqlite3``
  connection must not be shared by threads at once). It creates the schema once,
  checks its version, and runs short read and write transactions.
- Waiting for change without a server to wake us: ``PRAGMA data_version`` changes when
  another connection commits, and costs a few microseconds, so one poller per event
  loop checks it on a schedule (``PollPolicy``) that is fast while the file is busy and
  backs off when it is idle, and wakes every coroutine waiting on that loop.

Statements are short, so they run synchronously inside the async methods: a hop to an
executor would cost more than the statement.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from celeriac.errors import ConfigurationError

# UPDATE ... RETURNING, which claims messages in one statement, arrived in 3.35.
MIN_SQLITE_VERSION = (3, 35, 0)

# Bytes the write-ahead log is trimmed to when a checkpoint empties it.
WAL_SIZE_LIMIT = 64 * 1024 * 1024

# How long a writer waits for another process's write transaction before failing.
BUSY_TIMEOUT = 10.0

SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS celeriac_schema (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)"""

# (data_version of this thread's connection, writes made through this Database object).
# The second part is needed because data_version ignores the connection's own commits.
Version = tuple[int, int]


def path_from_url(url: str) -> str:
    """The absolute file path of a ``sqlite://`` URL (three slashes relative, four absolute)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    if parts.netloc:
        raise ConfigurationError(
            f"a sqlite URL names a file, not a host: {url!r}; use sqlite:///relative.db "
            "or sqlite:////absolute/path.db")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"a sqlite URL takes no query or fragment: {url!r}")
    path = unquote(parts.path)[1:]  # the slash after the empty host is not part of the path
    if not path or path.endswith("/"):
        raise ConfigurationError(f"a sqlite URL must name a file: {url!r}, e.g. "
                                 "sqlite:///celeriac.db")
    if path == ":memory:":
        raise ConfigurationError("an in-memory SQLite database cannot be shared by threads "
                                 "or processes; use memory:// instead")
    # Resolved now, so that a later chdir() cannot make threads open different files.
    return os.path.abspath(path)


def placeholders(values: Sequence[object]) -> str:
    """The ``?, ?, ?`` of an ``IN (...)`` list for ``values``."""
    return ", ".join("?" * len(values))


def check_sqlite_version() -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        wanted = ".".join(map(str, MIN_SQLITE_VERSION))
        raise ConfigurationError(f"the sqlite broker needs SQLite {wanted} or later; this "
                                 f"Python links SQLite {sqlite3.sqlite_version}")


def open_connection(path: str) -> sqlite3.Connection:
    """Open ``path`` in WAL mode, tuned for many short transactions from many processes."""
    # timeout= is SQLite's busy timeout. isolation_level=None: no implicit
    # transactions, we BEGIN explicitly. A connection is used by one thread only, but
    # closed by whichever thread closes the Database.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                           check_same_thread=False)
    try:
        mode = _switch_to_wal(conn)
        if str(mode).lower() != "wal":
            raise ConfigurationError(f"SQLite could not put {path} in WAL mode (it is in "
                                     f"{mode!r} mode); is it on a local filesystem?")
        # NORMAL in WAL mode: a commit survives a process crash; only a power loss can
        # lose the last transactions. FULL would fsync every small send.
        conn.execute("PRAGMA synchronous = NORMAL")
        # After a burst the WAL is truncated back to this size rather than keeping its peak.
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    except BaseException:
        conn.close()
        raise
    return conn


def _switch_to_wal(conn: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode = WAL``, retried while processes opening a new file collide.

    Turning a new file to WAL upgrades a read lock to a write lock, and SQLite fails
    such an upgrade at once, without the busy timeout (waiting could deadlock), when
    another process is doing the same: several worker processes and a producer
    starting together on a new file.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            mode: str = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            return mode
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


# Waits between attempts to take the write lock: short, since a writer holds it for
# about 100 µs, growing to a cap so that a long checkpoint is not hammered.
LOCK_RETRY_FIRST = 0.00005
LOCK_RETRY_MAX = 0.001
_BUSY_TIMEOUT_MS = int(BUSY_TIMEOUT * 1000)


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for the write lock with short sleeps.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ms... between attempts, far longer
    than a writer here holds the lock, so contended workers idled while the lock was
    free (measured: W2 drain +10-20% with this loop). The busy timeout is off only
    for this statement (two PRAGMAs, about 1.5 µs each); everything else keeps it.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + BUSY_TIMEOUT
        delay = LOCK_RETRY_FIRST
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                message = str(exc)
                if ("locked" not in message and "busy" not in message) \
                        or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, LOCK_RETRY_MAX)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")


@dataclass(frozen=True, slots=True)
class Schema:
    """The tables of one component, created on first connection."""

    component: str  # its row in celeriac_schema: "broker", "results"
    version: int
    statements: Sequence[str]
    # version -> the statements that bring a file of that version to the next one, so
    # that an older file is upgraded in place instead of refused.
    upgrades: Mapping[int, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How often to look at ``PRAGMA data_version`` while someone waits.

    ``first`` while the file changed within the last ``active_for`` seconds; after that
    the interval grows to ``backoff`` times the idle time beyond it (so the added latency
    stays a small fraction of the quiet period), up to ``maximum``.
    """

    first: float
    active_for: float
    maximum: float
    backoff: float = 0.1
    wake_on_wait: bool = False  # a new waiter counts as activity (a result is expected soon)

    def interval(self, idle: float) -> float:
        if idle < self.active_for:
            return self.first
        return min(self.maximum, max(self.first, (idle - self.active_for) * self.backoff))


class Database:
    """One SQLite file used from many threads, with a connection per thread."""

    def __init__(self, url: str, schema: Schema, poll: PollPolicy,
                 error: type[Exception]) -> None:
        check_sqlite_version()
        self.path = path_from_url(url)
        self.schema = schema
        self.poll = poll
        self.error = error  # what sqlite3 errors are raised as (BrokerError, BackendError)
        self._lock = threading.Lock()
        self._local = threading.local()
        # Replaced on close() and in a forked child, so that every thread's cached
        # connection becomes stale at once and is reopened on its next use.
        self._epoch = object()
        self._open: list[sqlite3.Connection] = []  # mutated in place: the finalizer has it
        self._schema_ready = False
        self._writes = 0
        self._feeds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Feed] = (
            weakref.WeakKeyDictionary())
        _LIVE.add(self)
        # A Database dropped without close() (an App never closed) still closes its files.
        weakref.finalize(self, _close_all, self._open)

    # -- connections ----------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema made) on first use."""
        held: tuple[object, sqlite3.Connection] | None = getattr(self._local, "held", None)
        if held is not None and held[0] is self._epoch:
            return held[1]
        return self._open_for_thread()

    def _open_for_thread(self) -> sqlite3.Connection:
        try:
            conn = open_connection(self.path)
        except sqlite3.Error as exc:
            raise self.error(f"cannot open SQLite database {self.path}: {exc}") from exc
        try:
            if not self._schema_ready:
                self._create_schema(conn)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._open.append(conn)
            self._local.held = (self._epoch, conn)
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        with self._transaction(conn):
            conn.execute(SCHEMA_TABLE)
            conn.execute("INSERT OR IGNORE INTO celeriac_schema VALUES (?, ?)",
                         (self.schema.component, self.schema.version))
            found = conn.execute("SELECT version FROM celeriac_schema WHERE component = ?",
                                 (self.schema.component,)).fetchone()[0]
            while found in self.schema.upgrades and found < self.schema.version:
                for statement in self.schema.upgrades[found]:
                    conn.execute(statement)
                found += 1
                conn.execute("UPDATE celeriac_schema SET version = ? WHERE component = ?",
                             (found, self.schema.component))
            if found != self.schema.version:
                raise self.error(
                    f"{self.path} holds {self.schema.component} schema version {found}, "
                    f"this celeriac uses version {self.schema.version}; use a new file")
            for statement in self.schema.statements:
                conn.execute(statement)
        self._schema_ready = True

    def close(self) -> None:
        """Close every thread's connection; the next use opens new ones."""
        with self._lock:
            self._epoch = object()
            _close_all(self._open)

    def _abandon_after_fork(self) -> None:
        # The parent's connections must not be used, nor even closed, in a forked child:
        # closing would touch the file locks SQLite shares per process. Keep them
        # referenced forever instead, and open new ones.
        _ABANDONED.extend(self._open)
        self._open.clear()
        self._epoch = object()
        self._lock = threading.Lock()
        self._feeds = weakref.WeakKeyDictionary()

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def read(self, snapshot: bool = False) -> Iterator[sqlite3.Connection]:
        """This thread's connection for reads; ``snapshot`` makes several reads agree."""
        conn = self.connection()
        try:
            if not snapshot:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._translated(exc) from exc

    def write(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction, committed when the block ends without an error."""
        return self._transaction(self.connection())

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front. A deferred transaction that reads
        # and then writes fails at once (SQLITE_BUSY_SNAPSHOT) when another process wrote
        # in between; taking the lock first makes it wait through the busy timeout.
        # Kept to one generator: it is on every send, fetch and ack.
        try:
            _begin_immediate(conn)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._translated(exc) from exc
        self._writes += 1

    def _translated(self, exc: sqlite3.Error) -> Exception:
        """SQLite's error as this component's error (the caller chains the cause)."""
        return self.error(f"SQLite {self.path}: {exc}")

    # -- waiting for change ---------------------------------------------------------------

    def version(self) -> Version:
        """A value that differs once anyone, in any process, committed a change."""
        conn = self.connection()
        try:
            data_version: int = conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise self._translated(exc) from exc
        return data_version, self._writes

    async def wait_for_change(self, since: Version, timeout: float) -> None:
        """Return when the file changed after ``since`` was read, or after ``timeout``."""
        if timeout <= 0 or self.version() != since:
            return
        loop = asyncio.get_running_loop()
        with self._lock:
            feed = self._feeds.get(loop)
            if feed is None:
                feed = self._feeds[loop] = _Feed(self)
        await feed.wait(since, timeout)


def _close_all(conns: list[sqlite3.Connection]) -> None:
    while conns:
        conns.pop().close()


class _Feed:
    """One poller per event loop and Database, waking that loop's waiters on change.

    Sharing it means a thousand coroutines awaiting results cost one
    ``PRAGMA data_version`` per interval, not a thousand.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._waiters: dict[asyncio.Future[None], Version] = {}
        self._task: asyncio.Task[None] | None = None
        self._seen: Version | None = None
        self._active_at = float("-inf")  # monotonic time of the last change seen

    async def wait(self, since: Version, timeout: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[future] = since
        if self._db.poll.wake_on_wait:
            self._active_at = time.monotonic()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="celeriac-sqlite-poll")
        try:
            await asyncio.wait((future,), timeout=timeout)
            if future.done():
                future.result()  # raises what the poller hit
        finally:
            del self._waiters[future]
            future.cancel()
            if not self._waiters and self._task is not None:
                # Nobody waits: stop polling rather than leave a task behind when the
                # loop closes.
                self._task.cancel()
                self._task = None

    async def _run(self) -> None:
        while True:
            idle = time.monotonic() - self._active_at
            await asyncio.sleep(self._db.poll.interval(idle))
            try:
                version = self._db.version()
            except Exception as exc:  # the waiters see the error; the poller must not die
                self._wake_all(exc)
                continue
            if version != self._seen:
                self._seen = version
                self._active_at = time.monotonic()
            for future, since in self._waiters.items():
                if since != version and not future.done():
                    future.set_result(None)

    def _wake_all(self, exc: Exception) -> None:
        for future in self._waiters:
            if not future.done():
                future.set_exception(exc)


# Every live Database, so that a forked child can drop the parent's connections.
_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()
_ABANDONED: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for db in list(_LIVE):
        db._abandon_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

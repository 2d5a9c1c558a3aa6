"""A Redis Sentinel deployment of a test's own: one primary, one replica, three sentinels.

Every server runs on a free loopback port in the test's directory and is killed by
``stop`` (the fixtures call it whatever happened). The sentinels declare the primary
down after ``DOWN_AFTER_MS`` without an answer and may retry a failover after
``FAILOVER_TIMEOUT_MS``, so a killed primary is replaced within a few seconds.
``bench/sentinel_failover.py`` uses it too.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO

import redis
from fault_proxy import FaultProxy
from redis_harness import RedisServer, free_port, unavailable

MASTER_NAME = "celeriac-test"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 2000
SENTINELS = 3
QUORUM = 2


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Sentinel:
    """``redis-server --sentinel`` on its own port, with its own (rewritten) config file."""

    def __init__(self, directory: Path, primary_port: int, quorum: int = QUORUM) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed")
        self.port = free_port()
        self.directory = directory
        directory.mkdir()
        config = directory / "sentinel.conf"
        config.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {directory}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {quorum}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1", ""]))
        self._log: IO[bytes] = (directory / "sentinel.log").open("ab")
        self.process = subprocess.Popen([str(binary), str(config), "--sentinel"],
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def master(self) -> dict[str, object]:
        with contextlib.closing(self.client()) as client:
            state: dict[str, object] = client.sentinel_master(MASTER_NAME)
            return state

    def master_port(self) -> int | None:
        with contextlib.suppress(redis.RedisError), contextlib.closing(self.client()) as client:
            address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            return int(address[1]) if address else None
        return None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()

    def log(self) -> str:
        return (self.directory / "sentinel.log").read_text(errors="replace")


class SentinelCluster:
    """Primary, replica and three sentinels, ready: the replica in sync, every sentinel
    seeing it and the other two (so that a quorum can agree and elect a leader)."""

    def __init__(self, root: Path, timeout: float = 20.0, proxied: bool = False,
                 sentinels: int = SENTINELS) -> None:
        """``proxied``: the replica replicates through a ``FaultProxy`` (``link``), so
        that the replication link can be frozen (a lagging replica). ``sentinels``: one
        is enough where nothing fails over (the contract suites)."""
        self.root = root
        self.count = sentinels
        self.servers: list[RedisServer] = []
        self.sentinels: list[Sentinel] = []
        self.link: FaultProxy | None = None
        self._proxied = proxied
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        (self.root / "primary").mkdir(parents=True)
        self.primary = RedisServer(self.root / "primary")
        self.servers.append(self.primary)
        (self.root / "replica").mkdir()
        source = self.primary.port
        if self._proxied:
            self.link = FaultProxy(self.primary.port)
            source = self.link.port
        self.replica = RedisServer(self.root / "replica",
                                   ("--replicaof", "127.0.0.1", str(source)))
        self.servers.append(self.replica)
        _wait(self._replica_in_sync, timeout, "the replica to be in sync")
        for n in range(self.count):
            self.sentinels.append(Sentinel(self.root / f"sentinel-{n}", self.primary.port,
                                           min(QUORUM, self.count)))
        _wait(self._sentinels_ready, timeout,
              "every sentinel to see the replica and the other sentinels")

    def _replica_in_sync(self) -> bool:
        with contextlib.closing(self.replica.client()) as client:
            info = client.info("replication")
        return info.get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        try:
            states = [sentinel.master() for sentinel in self.sentinels]
        except redis.RedisError:
            return False
        return all(int(str(state["num-slaves"])) >= 1
                   and int(str(state["num-other-sentinels"])) >= self.count - 1
                   for state in states)

    def url(self, db: int = 0) -> str:
        """Celery's sentinel URL: one ``sentinel://`` per sentinel, joined by ';'."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels) + f"/{db}"

    def kill_primary(self) -> float:
        """SIGKILL the primary; return the monotonic time it died."""
        assert self.primary.process is not None
        self.primary.process.kill()
        self.primary.process.wait(10)
        return time.monotonic()

    def failover(self) -> float:
        """Ask a sentinel for a failover with the primary alive (``SENTINEL FAILOVER``):
        the replica is promoted and the primary demoted to its replica."""
        with contextlib.closing(self.sentinels[0].client()) as client:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        return time.monotonic()

    def wait_for_failover(self, timeout: float = 20.0) -> float:
        """Wait until every sentinel names the replica as master; return when that was."""
        _wait(lambda: all(s.master_port() == self.replica.port for s in self.sentinels),
              timeout, f"the sentinels to promote the replica (port {self.replica.port})")
        _wait(lambda: self._role(self.replica) == "master", timeout,
              "the replica to become a master")
        return time.monotonic()

    @staticmethod
    def _role(server: RedisServer) -> str | None:
        try:
            with contextlib.closing(server.client()) as client:
                return str(client.info("replication").get("role"))
        except redis.RedisError:
            return None

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
        for server in self.servers:
            server.kill()
        if self.link is not None:
            self.link.close()

    def logs(self) -> str:
        parts = [f"----- {s.directory.name}\n{s.log()[-4000:]}" for s in self.sentinels]
        parts += [f"----- {r.directory.name}\n{r.log()[-4000:]}" for r in self.servers]
        return "\n".join(parts)

"""``wait_for_replicas``: a send returns only once replicas have its messages too.

Redis replicates asynchronously: a send that returned is on the master, and reaches
its replicas a moment later. If the master dies in that moment and a replica is
promoted (Sentinel), the send is lost although it returned. With the broker transport
option ``wait_for_replicas=N``, each publish batch is followed, on the same connection,
by ``WAIT N timeout``, and the send returns only when at least N replicas acknowledged
having received everything that connection wrote; otherwise it raises
``BrokerUnavailable`` (the messages are on the master and may or may not survive: a
producer that sends again may have them run twice, which at-least-once allows).

What WAIT does not promise (Redis' own documentation says the same): it does not make
Redis strongly consistent. A replica acknowledges having *received* the writes, not
having written them to disk, so a replica that crashes with the master can lose them;
Sentinel may promote a replica other than the one that acknowledged (with two or more
replicas); and a master cut off from its sentinels keeps accepting writes for a while
after another was promoted, which then vanish when it rejoins as a replica. Measured
against the failover this option is for (the master killed, its one replica
promoted), it closed the window entirely: docs/brokers.md has the figures.

Options (``broker_transport_options``): ``wait_for_replicas`` (replicas that must
acknowledge each send, default 0: off) and ``wait_for_replicas_timeout`` (seconds a send
waits for them, default 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celeriac.errors import BrokerError, BrokerUnavailable, ConfigurationError

REPLICATION_OPTIONS = frozenset({"wait_for_replicas", "wait_for_replicas_timeout"})
DEFAULT_TIMEOUT = 1.0


@dataclass(frozen=True)
class Replication:
    """How many replicas must acknowledge a send, and how long a send waits for them."""

    replicas: int = 0
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Replication:
        replicas = options.get("wait_for_replicas", 0)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ConfigurationError(f"wait_for_replicas must be a whole number >= 0 (the "
                                     f"replicas that acknowledge each send), not "
                                     f"{replicas!r}")
        timeout = options.get("wait_for_replicas_timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not timeout > 0 or math.isinf(timeout):
            raise ConfigurationError(f"wait_for_replicas_timeout must be a number of "
                                     f"seconds > 0, not {timeout!r}")
        return cls(replicas, float(timeout))

    def command(self) -> tuple[Any, ...]:
        """WAIT's arguments (its timeout in whole milliseconds; 0 would wait forever)."""
        return ("WAIT", self.replicas, max(1, math.ceil(self.timeout * 1000)))

    def check(self, acknowledged: Any, where: str, count: int) -> None:
        """Raise unless WAIT's reply says enough replicas acknowledged."""
        if isinstance(acknowledged, BaseException):
            raise BrokerError(f"Redis broker publish at {where}: WAIT failed: "
                              f"{acknowledged}") from acknowledged
        if int(acknowledged) < self.replicas:
            raise BrokerUnavailable(
                f"Redis broker publish at {where}: {count} message(s) are on the master, "
                f"but only {int(acknowledged)} of the {self.replicas} replica(s) asked for "
                f"(wait_for_replicas) acknowledged them within {self.timeout:g} s: they "
                "may be lost if the master fails now; sending them again may run them "
                "twice")

"""Which server keeps the state an app's processes share: one rule for every feature.

Unique jobs (``uniqueness``), beat's lease and run states (``beat.store``), replay
protection's nonces (``security.replay``) and the dashboard's task history
(``dashboard.history_open``) all keep state that every producer, worker, beat and
dashboard of a cluster must see, and none of them wants a server of its own. So each
asks ``state_home`` where it lives:

- the broker's server when the broker can hold it: ``memory://`` (this process),
  ``sqlite://`` (its file), ``redis://``/``rediss://`` (its server, under its key
  prefix), ``postgresql://`` (tables in its schema);
- else (RabbitMQ, or any broker that carries messages only) the result backend's
  server, on the same terms;
- else a ``ConfigurationError`` that says what the feature needs and what to set.

The feature then makes its own store on ``StateHome.owner`` (the broker or backend
object, whose connections and settings it reuses), so the choice is made here once and
each feature keeps its own error wording and its own stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from celeriac.errors import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import App

Kind = Literal["memory", "sqlite", "redis", "postgresql"]

# A broker's or backend's ``scheme`` -> the kind of server that can keep shared state.
KINDS: dict[str, Kind] = {
    "memory": "memory",
    "sqlite": "sqlite",
    "redis": "redis",
    "rediss": "redis",
    "sentinel": "redis",  # the master the sentinels name
    "postgresql": "postgresql",
}

# What to set, in every refusal (the features add what they need it for).
WHAT_TO_SET = ("set result_backend to a redis://, sqlite:/// or postgresql:// URL (or use "
               "a Redis, SQLite or PostgreSQL broker)")


@dataclass(frozen=True)
class StateHome:
    """Where shared state lives: a broker or backend object, and what kind of server."""

    owner: Any  # the Broker or ResultBackend whose server keeps the state
    kind: Kind
    role: Literal["broker", "backend"]

    @property
    def on_broker(self) -> bool:
        return self.role == "broker"


def kind_of(owner: Any) -> Kind | None:
    """The kind of server a broker or backend object keeps state on, or None."""
    return KINDS.get(getattr(owner, "scheme", ""))


def find_state_home(app: App) -> StateHome | None:
    """The server that keeps ``app``'s shared state, or None when neither the broker nor
    the result backend can (for a feature with a fallback of its own)."""
    broker: Any = app.broker
    kind = kind_of(broker)
    if kind is not None:
        return StateHome(broker, kind, "broker")
    backend: Any = app.backend
    kind = kind_of(backend)
    if kind is not None:
        return StateHome(backend, kind, "backend")
    return None


def state_home(app: App, needs: str) -> StateHome:
    """The server that keeps ``app``'s shared state (see the module docstring).

    ``needs`` opens the error when there is none: what the feature is and why it needs
    a server, as in ``"unique jobs (unique_for, unique_key) need a server to hold their
    keys"``.
    """
    home = find_state_home(app)
    if home is not None:
        return home
    broker: Any = app.broker
    backend: Any = app.backend
    raise ConfigurationError(
        f"{needs}: the {broker.scheme}:// broker keeps no such state, and the "
        f"{backend.scheme}:// result backend stores nothing on a server; {WHAT_TO_SET}")

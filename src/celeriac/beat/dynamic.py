"""``app.beat``: periodic tasks changed at run time, kept on the server.

``app.beat.add(name, task, schedule, args=..., kwargs=..., options=..., missed=...)``
stores an entry beside the static ones of ``beat_schedule``; ``remove``, ``pause`` and
``resume`` change it (``pause``/``resume`` work on static entries too); ``list()`` shows
every entry with what the server knows of its runs. Each change bumps a version number
that the leading beat reads four times a second (``beat.scheduler``), so it applies
within a second, with no restart. ``celeriac beat add|remove|pause|resume|list`` calls
these.

Dynamic entries are stored as JSON: their arguments must be JSON values.

Also here: ``periodic_task_entry``, the ``beat_schedule`` entry that Celery's
``app.add_periodic_task(schedule, sig, ...)`` makes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.beat.entry import Entry, make_entry, static_entries
from celeriac.beat.store import BeatStore, LeaseHolder, RunState, open_store
from celeriac.errors import ConfigurationError
from celeriac.timezones import schedule_zone

if TYPE_CHECKING:
    from celeriac.app import App


@dataclass(frozen=True)
class EntryInfo:
    """One entry as ``list()`` shows it."""

    entry: Entry
    paused: bool
    state: RunState | None  # None until a leader has scheduled it
    next_due: float | None  # Unix time of its next run, if it has been scheduled

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def source(self) -> str:
        return "dynamic" if self.entry.dynamic else "beat_schedule"


class Beat:
    """The periodic tasks of an app, as kept on its server (``app.beat``)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._store: BeatStore | None = None

    @property
    def store(self) -> BeatStore:
        if self._store is None:
            self._store = open_store(self.app)
        return self._store

    def _static(self) -> dict[str, Entry]:
        self.app.finalize()  # add_periodic_task receivers add their entries
        return static_entries(self.app.conf.beat_schedule, self._zone)

    @property
    def _zone(self) -> Any:
        return schedule_zone(self.app.conf.enable_utc, self.app.conf.timezone)

    def add(self, name: str, task: Any, schedule: Any, args: Sequence[Any] | None = None,
            kwargs: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
            missed: str = "skip") -> Entry:
        """Add (or replace) the dynamic entry ``name``; ``task`` is a task or its name."""
        task_name = getattr(task, "name", task)
        if name in self._static():
            raise ConfigurationError(f"periodic task {name!r} is in beat_schedule (the "
                                     f"configuration); give the dynamic entry another name")
        entry = make_entry(name, task_name, schedule, args, kwargs, options, missed,
                           dynamic=True, zone=self._zone)
        self.store.put_entry(name, entry.to_json())
        return entry

    def remove(self, name: str) -> bool:
        """Delete the dynamic entry ``name`` and its run history; False if there was none."""
        if name in self._static():
            raise ConfigurationError(f"periodic task {name!r} is in beat_schedule (the "
                                     f"configuration): remove it there, or pause it")
        return self.store.remove_entry(name)

    def pause(self, name: str) -> None:
        """Stop sending ``name``'s runs (they are skipped) until ``resume``."""
        self._known(name)
        self.store.set_paused(name, True)

    def resume(self, name: str) -> None:
        """Send ``name``'s runs again, from its next due time."""
        self._known(name)
        self.store.set_paused(name, False)

    def list(self) -> list[EntryInfo]:
        """Every entry, static and dynamic, with its state on the server, by name."""
        store = self.store
        entries = self._entries()
        paused, states = store.paused(), store.states()
        found = []
        for name, entry in sorted(entries.items()):
            state = states.get(name)
            next_due = None
            if state is not None and state.key == entry.key:
                next_due = entry.schedule.next_after(state.cursor, state.anchor, self._zone)
            found.append(EntryInfo(entry, name in paused, state, next_due))
        return found

    def leader(self) -> LeaseHolder | None:
        """The beat process that leads now, if any."""
        return self.store.leader()

    def _entries(self) -> dict[str, Entry]:
        dynamic = {name: Entry.from_json(name, data)
                   for name, data in self.store.dynamic_entries().items()}
        return {**dynamic, **self._static()}

    def _known(self, name: str) -> None:
        if name not in self._entries():
            raise ConfigurationError(f"there is no periodic task named {name!r} "
                                     f"(celeriac beat list shows them)")

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def periodic_task_entry(schedule: Any, sig: Any, args: Sequence[Any],
                        kwargs: Mapping[str, Any] | None, name: str | None,
                        opts: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ``beat_schedule`` item Celery's ``add_periodic_task`` makes of a signature."""
    options = dict(opts)
    missed = options.pop("missed", "skip")
    task = getattr(sig, "name", None)
    if not isinstance(task, str):
        raise TypeError(f"add_periodic_task needs a signature (task.s(...)), not {sig!r}")
    entry = {
        "task": task, "schedule": schedule,
        # As Celery's clone of the signature: extra args in front, extra kwargs over.
        "args": (*args, *getattr(sig, "args", ())),
        "kwargs": {**(getattr(sig, "kwargs", None) or {}), **(kwargs or {})},
        "options": {**dict(getattr(sig, "options", {}) or {}), **options},
        "missed": missed,
    }
    return name or repr(sig), entry

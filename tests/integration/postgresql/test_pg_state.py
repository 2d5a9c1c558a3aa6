"""Shared state on PostgreSQL only (issue 16 item 3), on real processes: unique jobs,
beat, and replay protection of signed messages, with a ``postgresql://`` broker and
result backend and nothing else.

The cases are the integration suite's own, run unchanged on a PostgreSQL deployment:

- many producers, one unique key: every task a send returned runs once, one per
  lifetime of the key (``test_unique_workers``); a killed worker's key is freed by its
  ``unique_for`` deadline, not before;
- three beats with the leader killed twice send every run of a 1-second entry exactly
  once; schedule changes reach the running leader within a second
  (``test_beat_processes``);
- signed messages: forgeries and a replay are dead-lettered, rotation and retries run
  (``signing_cases``), the replay caught by the nonces in the broker's schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import test_beat_processes as beat_cases
import test_unique_workers as unique_cases
from pg_harness import PostgreSQLDeployment, with_schema
from signing_cases import check_signing, worker_settings
from worker_harness import LEASE_SECONDS, Deployment

from celeriac import App


@pytest.fixture
def make_world(pg_database: str, tmp_path: Path
               ) -> Iterator[Callable[[str], Deployment]]:
    """The unique-jobs cases' deployment maker, on PostgreSQL whatever the kind."""
    made: list[Deployment] = []

    def make(kind: str) -> Deployment:
        root = tmp_path / f"{kind}-{len(made)}"
        root.mkdir()
        world = PostgreSQLDeployment(root, with_schema(pg_database), LEASE_SECONDS)
        made.append(world)
        return world

    try:
        yield make
    finally:
        for world in made:
            world.close()


def test_a_unique_key_sent_by_many_producers_runs_one_task_per_lifetime(
        make_world: Callable[[str], Deployment], tmp_path: Path) -> None:
    unique_cases.test_many_producers_one_key_one_execution_per_lifetime(
        "postgresql", make_world, tmp_path)


def test_a_killed_workers_unique_key_is_freed_by_its_deadline(
        make_world: Callable[[str], Deployment]) -> None:
    unique_cases.test_a_killed_workers_key_is_freed_by_its_deadline("postgresql", make_world)


class PgBeatWorld(beat_cases.World):
    """``test_beat_processes``'s world with a PostgreSQL broker and result backend."""

    def __init__(self, url: str, root: Path) -> None:
        self.kind, self.root = "postgresql", root
        self.ledger = root / "ledger.jsonl"
        self.ledger.touch()
        self.settings = {"broker_url": url, "result_backend": url}
        self.app = App("beat_app", beat_schedule=beat_cases.BEAT_SCHEDULE, **self.settings)
        self.processes = []

    def close(self) -> None:
        for process in self.processes:
            process.kill()
        self.app.beat.close()
        self.app.close()


@pytest.fixture
def beat_world(pg_url: str, tmp_path: Path) -> Iterator[PgBeatWorld]:
    world = PgBeatWorld(pg_url, tmp_path)
    try:
        yield world
    except BaseException:
        print(world.logs())
        raise
    finally:
        world.close()


def test_three_beats_on_postgresql_send_every_run_once_across_two_leader_kills(
        beat_world: PgBeatWorld) -> None:
    beat_cases.test_three_beats_with_the_leader_killed_twice_send_every_run_once(beat_world)
    # The state was in the broker's schema, nowhere else.
    settings = beat_world.app.broker.settings  # type: ignore[attr-defined]
    with psycopg.connect(settings.conninfo) as conn:
        row = conn.execute(
            f'SELECT count(*) FROM "{settings.schema}".celeriac_beat_state').fetchone()
    assert row is not None
    assert row[0] >= 1


def test_schedule_changes_reach_the_leader_on_postgresql_within_a_second(
        beat_world: PgBeatWorld) -> None:
    beat_cases.test_schedule_changes_reach_the_running_leader_within_a_second(beat_world)


def test_a_signed_worker_on_postgresql_refuses_forgeries_and_replays(
        deployment: PostgreSQLDeployment) -> None:
    deployment.start_worker("-c", "2", **worker_settings()).wait_ready()
    check_signing(deployment)
    # The nonces seen are in the broker's schema (every worker process and node agrees).
    settings = deployment.probe.broker.settings  # type: ignore[attr-defined]
    with psycopg.connect(settings.conninfo) as conn:
        row = conn.execute(
            f'SELECT count(*) FROM "{settings.schema}".celeriac_seen_nonces').fetchone()
    assert row is not None
    assert row[0] > 0

"""``celeriac beat list|add|remove|pause|resume`` on a SQLite file, and their errors.

As in test_cli.py, the command loads ``-A beat_cli_proj``, a module put in
``sys.modules`` whose App shares the file with the App the test inspects. (The command
that runs beat itself is tested on real processes: tests/integration/test_beat_processes.py.)
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from celeriac import App
from celeriac.cli.main import cli
from celeriac.schedules import crontab


def make_app(url: str) -> App:
    return App("proj", broker=url, beat_schedule={
        "tick": {"task": "proj.tick", "schedule": 30.0}})


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    url = f"sqlite:///{tmp_path / 'beat.db'}"
    module = types.ModuleType("beat_cli_proj")
    module.app = make_app(url)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "beat_cli_proj", module)
    mine = make_app(url)
    yield mine
    mine.beat.close()
    mine.close()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["-A", "beat_cli_proj", "beat", *args])


def test_add_pause_resume_remove_change_what_is_on_the_server(app: App) -> None:
    added = invoke("add", "nightly", "proj.report", "--crontab", "0 3 * * mon-fri",
                   "-a", '["daily"]', "-k", '{"x": 1}', "--queue", "reports",
                   "--missed", "run_once")
    assert added.exit_code == 0, added.output
    assert "added nightly: proj.report 0 3 * * mon-fri" in added.output
    entries = {info.name: info for info in app.beat.list()}
    nightly = entries["nightly"].entry
    assert nightly.schedule == crontab(minute=0, hour=3, day_of_week="mon-fri")
    assert (nightly.args, nightly.kwargs, nightly.options, nightly.missed) == (
        ("daily",), {"x": 1}, {"queue": "reports"}, "run_once")
    assert invoke("pause", "tick").exit_code == 0  # a static entry can be paused
    assert {info.name for info in app.beat.list() if info.paused} == {"tick"}
    listed = invoke("list").output
    assert "leader: none" in listed
    assert "tick  proj.tick  every 30s  [beat_schedule]  last never  paused" in listed
    assert "nightly  proj.report  0 3 * * mon-fri  [dynamic]" in listed
    assert invoke("resume", "tick").exit_code == 0
    assert not any(info.paused for info in app.beat.list())
    assert invoke("remove", "nightly").exit_code == 0
    assert [info.name for info in app.beat.list()] == ["tick"]


@pytest.mark.parametrize(("args", "message"), [
    (("add", "x", "proj.t"), "give the schedule as --every SECONDS or --crontab"),
    (("add", "x", "proj.t", "--every", "1", "--crontab", "* * * * *"), "one of them"),
    (("add", "x", "proj.t", "--crontab", "* * *"), "five fields"),
    (("add", "x", "proj.t", "--every", "0"), "x>0"),
    (("add", "x", "proj.t", "--every", "1", "-a", "{}"), "not an array"),
    (("add", "tick", "proj.t", "--every", "1"), "is in beat_schedule"),
    (("remove", "tick"), "remove it there, or pause it"),
    (("remove", "nope"), "no dynamic periodic task named 'nope'"),
    (("pause", "nope"), "no periodic task named 'nope'"),
])
def test_mistakes_are_one_line_errors(app: App, args: tuple[str, ...],
                                      message: str) -> None:
    result = invoke(*args)
    assert result.exit_code != 0
    assert message in result.output or message in str(result.exception)

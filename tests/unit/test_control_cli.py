"""``celeriac inspect``, ``control`` and ``status`` against a ThreadedWorker on SQLite."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from celeriac import App
from celeriac.cli.main import cli
from celeriac.testing import ThreadedWorker


def make_app(url: str) -> App:
    app = App("proj", broker=url, backend=url)
    app.task(name="proj.add")(lambda x, y: x + y)
    return app


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'ctl.db'}"
    module = types.ModuleType("ctl_proj")
    module.app = make_app(url)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ctl_proj", module)
    monkeypatch.delenv("CELERIAC_APP", raising=False)
    return url


@pytest.fixture
def worker(url: str) -> Iterator[ThreadedWorker]:
    app = make_app(url)
    with ThreadedWorker(app, slots=2, hostname="cli@h") as worker:
        yield worker
    app.close()


def invoke(*args: str) -> Result:
    """The command with click's error handling: errors as one line and an exit status."""
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["-A", "ctl_proj", *args])


@pytest.mark.usefixtures("worker")
def test_inspect_and_control_print_json_per_node() -> None:
    ping = invoke("inspect", "ping", "--json", "-t", "0.3")
    assert ping.exit_code == 0, ping.output
    assert json.loads(ping.output) == {"cli@h": {"ok": "pong"}}
    grown = invoke("control", "pool_grow", "2", "--json", "-t", "0.3")
    assert json.loads(grown.output) == {"cli@h": {"ok": "pool will grow to 4"}}
    limit = invoke("control", "rate_limit", "proj.add", "10/s", "-t", "0.3")
    assert limit.exit_code == 0, limit.output
    assert "new rate limit set successfully" in limit.output
    status = invoke("status", "-t", "0.3")
    assert status.output.splitlines() == ["->  cli@h: OK", "", "1 node online."]


@pytest.mark.usefixtures("worker")
def test_a_refused_command_exits_1_with_the_nodes_reason() -> None:
    shrunk = invoke("control", "pool_shrink", "5", "--json", "-t", "0.3")
    assert shrunk.exit_code == 1
    assert json.loads(shrunk.output) == {
        "cli@h": {"error": "this worker has 2 slot(s): it cannot shrink by 5 (one slot at least)"}}


@pytest.mark.usefixtures("url")
def test_nobody_online_is_one_line_and_exit_1() -> None:
    status = invoke("status", "-t", "0.2")
    assert status.exit_code == 1
    assert status.output.strip() == "Error: no nodes replied within time constraint (0.2s)"


@pytest.mark.usefixtures("url")
@pytest.mark.parametrize(("args", "message"), [
    (["control", "rate_limit", "proj.add"], "rate_limit takes TASK_NAME RATE_LIMIT"),
    (["control", "pool_grow", "many"], "pool_grow: n must be a number, not 'many'"),
    (["control", "shutdown", "now"], "shutdown takes no arguments"),
    (["control", "rate_limit", "proj.add", "fast"],
     "rate_limit: rate limit 'fast' must start with a number"),
])
def test_wrong_arguments_are_one_usage_line(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output

"""Least privilege: ``--uid``/``--gid`` and the root rule, with real worker processes.

The tests run as root (here and in CI): a worker started with ``--uid nobody`` must run
its processes (and its tasks) as nobody, and a root worker that accepts pickle must
refuse to start unless ``--allow-root``. The broker is a redis-server of the module's
own; the worker's app lives in a directory every user may read (pytest's own temporary
directories are root's only).

Where the Python running the tests is installed under a directory only root may enter
(pyenv under /root, as on the test machines), a process dropped to nobody could not
load it, nor spawn its children. Such a worker then runs in a private mount namespace
(``unshare -m``) where that directory is replaced by a world-readable one that shows only
the Python installation: a view for that process tree alone, nothing on the machine
changes. A real deployment installs Python where its worker user can read it.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from redis_harness import RedisServer
from worker_harness import wait_until

import celeriac
from celeriac import App

APP_SOURCE = '''
import os
from celeriac import App

app = App("uid-tests")


@app.task(name="uid.whoami")
def whoami() -> list[int]:
    return [os.getuid(), os.getgid()]
'''

pytestmark = pytest.mark.skipif(os.getuid() != 0 and not os.environ.get("CI"),
                                reason="dropping privileges needs root (CI runs as root)")

NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path_factory.mktemp("redis"), ("--appendonly", "no"))
    yield redis
    redis.kill()


@pytest.fixture
def app_dir() -> Iterator[Path]:
    """A directory nobody may read, holding the worker's app module and celeriac."""
    directory = Path(tempfile.mkdtemp(prefix="celeriac-uid-"))
    directory.chmod(0o755)
    (directory / "uid_app.py").write_text(APP_SOURCE)
    (directory / "uid_app.py").chmod(0o644)
    # celeriac itself, readable by nobody wherever this checkout lives (a CI clone in a
    # directory only root may enter): first on the worker's PYTHONPATH.
    shutil.copytree(Path(celeriac.__file__).parent, directory / "celeriac",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in (directory / "celeriac").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (directory / "celeriac").chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _hidden_prefix() -> tuple[Path, Path] | None:
    """(the directory only root may enter, the Python tree inside it), or None."""
    prefix = Path(sys.base_prefix).resolve()
    for parent in reversed(prefix.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent, parent / prefix.relative_to(parent).parts[0]
    return None


def _launcher() -> tuple[list[str], str | None]:
    """The command prefix that lets nobody run this Python (see the module docstring),
    and the empty directory it mounts on (removed when the worker stops)."""
    hidden = _hidden_prefix()
    if hidden is None:
        return [], None
    parent, tree = hidden
    if shutil.which("unshare") is None:
        pytest.fail(f"Python lives under {parent}, which nobody may enter, and there is "
                    "no unshare to show it to the worker")
    view = tempfile.mkdtemp(prefix="celeriac-pyview-")
    script = (f"mount --bind {tree} {view} && mount -t tmpfs -o mode=755 tmpfs {parent} "
              f"&& mkdir -p {tree} && mount --bind {view} {tree} && exec \"$@\"")
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"], view


class Worker:
    def __init__(self, app_dir: Path, url: str, *args: str, **settings: object) -> None:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("CELERIAC_") and key != "C_FORCE_ROOT"}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(app_dir), *filter(None, [os.environ.get("PYTHONPATH")])])
        for name, value in {"broker_url": url, "result_backend": url, **settings}.items():
            env[f"CELERIAC_{name.upper()}"] = json.dumps(value)
        self.log_path = app_dir / "worker.log"
        self._log = self.log_path.open("wb")
        launcher, self._view = _launcher()
        self.popen = subprocess.Popen(
            [*launcher, sys.executable, "-m", "celeriac", "-A", "uid_app", "worker",
             "-l", "INFO", *args], env=env, cwd=app_dir, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, processes: int = 1) -> None:
        wait_until(lambda: self.log().count(" consuming ") >= processes
                   or self.popen.poll() is not None, 30, "the worker to consume")
        assert self.popen.poll() is None, self.log()

    def stop(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.popen.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, 9)
        self.popen.wait(10)
        self._log.close()
        if self._view is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._view)


def whoami(url: str) -> list[int]:
    app = App("uid-tests", broker=url, backend=url)
    try:
        result: list[int] = app.send_task("uid.whoami").get(timeout=20)
        return result
    finally:
        app.close()


@pytest.mark.timeout(90)
def test_uid_and_gid_drop_the_supervisor_and_its_processes_to_nobody(
    server: RedisServer, app_dir: Path,
) -> None:
    url = server.url + "?key_prefix=uid-prefork:"
    worker = Worker(app_dir, url, "-c", "2", "--uid", "nobody", "--gid", NOGROUP)
    try:
        worker.wait_ready(2)
        supervisor = psutil.Process(worker.popen.pid)
        children = [child for child in supervisor.children()
                    if "resource_tracker" not in " ".join(child.cmdline())]
        assert len(children) == 2, children
        for process in [supervisor, *children]:
            assert process.uids().real == process.uids().effective == NOBODY.pw_uid
            assert process.gids().real == process.gids().effective == NOBODY.pw_gid
        assert whoami(url) == [NOBODY.pw_uid, NOBODY.pw_gid]
    finally:
        worker.stop()


@pytest.mark.timeout(60)
def test_a_log_file_opened_as_root_is_given_to_the_user(
    server: RedisServer, app_dir: Path,
) -> None:
    log_file = app_dir / "celeriac.log"  # opened by the supervisor, then by each process
    worker = Worker(app_dir, server.url + "?key_prefix=uid-log:", "-c", "2",
                    "--uid", "nobody", "-f", str(log_file))
    try:
        wait_until(lambda: log_file.exists()
                   and log_file.read_text().count(" consuming ") >= 2, 30,
                   "both processes to log that they consume")
        assert log_file.stat().st_uid == NOBODY.pw_uid
    finally:
        worker.stop()


@pytest.mark.timeout(60)
def test_a_solo_worker_drops_to_a_numeric_uid_with_its_group(
    server: RedisServer, app_dir: Path,
) -> None:
    url = server.url + "?key_prefix=uid-solo:"
    worker = Worker(app_dir, url, "-P", "solo", "--uid", str(NOBODY.pw_uid))
    try:
        worker.wait_ready()
        process = psutil.Process(worker.popen.pid)
        assert process.uids().effective == NOBODY.pw_uid
        assert process.gids().effective == NOBODY.pw_gid  # --uid alone: the user's group
        assert whoami(url) == [NOBODY.pw_uid, NOBODY.pw_gid]
    finally:
        worker.stop()


@pytest.mark.timeout(60)
def test_root_with_pickle_refuses_to_start_in_one_line(
    server: RedisServer, app_dir: Path,
) -> None:
    pickle = {"accept_content": ["json", "pickle"]}
    refused = Worker(app_dir, server.url, **pickle)
    try:
        assert refused.popen.wait(30) == 1
        lines = [line for line in refused.log().splitlines() if line.strip()]
        error = [line for line in lines if line.startswith("Error:")]
        assert len(error) == 1, lines
        assert "refusing to run as root" in error[0]
        assert "--allow-root" in error[0]
        assert "Traceback" not in refused.log()
    finally:
        refused.stop()
    # --allow-root, or dropping to another user, lets it run
    for args in (("--allow-root",), ("--uid", "nobody")):
        worker = Worker(app_dir, server.url + "?key_prefix=uid-root:", "-P", "solo",
                        *args, **pickle)
        try:
            worker.wait_ready()
        finally:
            worker.stop()


@pytest.mark.timeout(30)
def test_an_unknown_user_is_a_usage_error(server: RedisServer, app_dir: Path) -> None:
    worker = Worker(app_dir, server.url, "--uid", "no-such-user-celeriac")
    try:
        assert worker.popen.wait(20) == 2
        assert "no such user" in worker.log()
    finally:
        worker.stop()

"""The worker's logging plays well with the app's: worker_log_format, and an app that
configures logging itself keeps its configuration with worker_hijack_root_logger=False."""

from __future__ import annotations

import os
import re
import signal
import textwrap
from pathlib import Path

from worker_harness import WorkerProcess, wait_until

from celeriac import App


class OwnAppWorker(WorkerProcess):
    app_module = "own_logging"


def start(tmp_path: Path, module: str) -> WorkerProcess:
    (tmp_path / "own_logging.py").write_text(textwrap.dedent(module).lstrip())
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERIAC_", "CELERY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    worker = OwnAppWorker(["-c", "1"], env, tmp_path, tmp_path / "worker.log")
    wait_until(lambda: " ready: consuming " in worker.log() or not worker.running, 30,
               "a ready worker process")
    return worker


def test_an_app_that_configures_logging_keeps_its_own_format(tmp_path: Path) -> None:
    # Given an app module that sets up logging itself, and asks the worker not to
    worker = start(tmp_path, f"""
        import logging, sys
        logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                            format="APP| %(name)s %(message)s")
        from celeriac import App
        app = App("own", broker="sqlite:///{tmp_path / 'b.db'}",
                  worker_hijack_root_logger=False)
    """)
    try:
        # Then the worker's lines come out through the app's handler, in its format
        log = worker.log()
        assert "APP| celeriac.worker " in log
        assert "ready: consuming" in log
        assert "INFO/worker-0]" not in log  # celeriac's own format was not installed
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait(30)
        worker.kill_all()


def test_worker_log_format_sets_the_format_of_every_line(tmp_path: Path) -> None:
    worker = start(tmp_path, f"""
        from celeriac import App
        app = App("own", broker="sqlite:///{tmp_path / 'b.db'}",
                  worker_log_format="FMT %(levelname)s %(processName)s %(message)s")
    """)
    try:
        log = worker.log()
        assert re.search(r"^FMT INFO worker-0 \S+@\S+/0 ready: consuming", log, re.M), log
        assert "ready: consuming" in log
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait(30)
        worker.kill_all()


def test_what_a_task_logs_carries_its_name_and_id(tmp_path: Path) -> None:
    # Given a worker whose task logs through the standard logging module
    broker = f"sqlite:///{tmp_path / 'b.db'}"
    worker = start(tmp_path, f"""
        import logging
        from celeriac import App
        app = App("own", broker="{broker}")

        @app.task(name="own.chatty")
        def chatty():
            logging.getLogger("own.tasks").warning("hello from the task")
    """)
    try:
        # When the task runs
        producer = App("own", broker=broker)
        result = producer.send_task("own.chatty")
        result.get(timeout=20)
        producer.close()

        # Then its line is in worker_task_log_format: the task's name and id in it
        worker.wait_for_log("hello from the task", timeout=10)
        assert f"own.chatty[{result.id}]: hello from the task" in worker.log()
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait(30)
        worker.kill_all()


def test_worker_signals_fire_in_the_processes_celery_fires_them_in(tmp_path: Path) -> None:
    # Given an app that listens to the worker's signals, and sets logging up itself
    record = tmp_path / "signals.txt"
    worker = start(tmp_path, f"""
        import logging, os, sys
        from celeriac import App
        from celeriac import signals

        app = App("own", broker="sqlite:///{tmp_path / 'b.db'}")

        def note(name, **extra):
            with open({str(record)!r}, "a") as out:
                out.write(f"{{name}} {{os.getpid()}} {{extra}}\\n")

        @signals.setup_logging.connect
        def own_logging(loglevel=None, **kwargs):
            logging.basicConfig(stream=sys.stderr, level=loglevel,
                                format="OWN %(processName)s %(message)s", force=True)
            note("setup_logging")

        for name in ("worker_init", "worker_process_init", "worker_ready",
                     "worker_shutdown"):
            getattr(signals, name).connect(
                lambda sender=None, signal=None, **kw: note(signal.name))

        @signals.worker_process_shutdown.connect
        def bye(sender=None, pid=None, exitcode=None, **kwargs):
            note("worker_process_shutdown", pid=pid, exitcode=exitcode)
    """)
    # When it starts and stops (the default -c of start() is one process)
    try:
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.kill_all()

    # Then each signal fired where Celery fires it, and the app's logging was used
    lines = [line.split(" ", 2) for line in record.read_text().splitlines()]
    supervisor, child = worker.pid, next(int(p) for n, p, _ in lines
                                         if n == "worker_process_init")
    assert (["worker_init", str(supervisor)] in [line[:2] for line in lines])
    assert ["worker_ready", str(child)] in [line[:2] for line in lines]
    assert ["worker_shutdown", str(supervisor)] in [line[:2] for line in lines]
    [bye] = [line for line in lines if line[0] == "worker_process_shutdown"]
    assert bye[1] == str(child)
    assert f"'pid': {child}, 'exitcode': 0" in bye[2]
    assert {line[1] for line in lines if line[0] == "setup_logging"} == {
        str(supervisor), str(child)}
    assert "OWN worker-0" in worker.log()
    assert "ready: consuming" in worker.log()

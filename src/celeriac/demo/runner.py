"""Running the demo: a real supervised worker, the workload, live progress, a summary.

The worker is the ``celeriac worker`` command in a process of its own, exactly what a
user would start, pointed at a SQLite file in a temporary directory through
``CELERIAC_BROKER_URL``. The demo process sends the workload through the same file and
counts results from it. At the end the worker gets SIGTERM, a warm shutdown.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live

from celeriac.app import App
from celeriac.config import Settings
from celeriac.demo import tasks
from celeriac.demo.display import Ending, live_view, summary
from celeriac.demo.tracker import Tracker
from celeriac.demo.workload import KINDS, Call, plan

SEND_BATCH = 250  # messages per publish: one transaction each on SQLite
POLL_INTERVAL = 0.25
STARTUP_TIMEOUT = 60.0
STALL_TIMEOUT = 30.0  # nothing finished for this long: something is wrong, stop waiting
STOP_TIMEOUT = 30.0


class DemoError(Exception):
    """The demo could not run (the worker did not start, or died)."""


@dataclass
class DemoWorker:
    """``celeriac -A celeriac.demo.tasks worker`` as a child process of the demo."""

    url: str
    processes: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "worker.log"

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("CELERIAC_")}  # the user's settings are not the demo's
        env.update(CELERIAC_BROKER_URL=self.url, CELERIAC_RESULT_BACKEND=self.url)
        command = [sys.executable, "-m", "celeriac", "-A", "celeriac.demo.tasks", "worker",
                   "-c", str(self.processes), "-l", "WARNING"]
        with self.log_path.open("wb") as log:
            # Its own session: Ctrl-C reaches only the demo, which then stops the worker
            # with one SIGTERM instead of a second signal turning it into a cold stop.
            self.process = subprocess.Popen(command, env=env, cwd=self.directory,
                                            stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(f"the worker exited with code {self.process.returncode}:\n"
                            f"{self.log_tail()}")

    def stop(self) -> int | None:
        """Warm shutdown; a second signal and then SIGKILL only if it does not stop."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        for signum, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGTERM, 10.0)):
            process.send_signal(signum)
            try:
                return process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        process.kill()
        process.wait()
        return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no worker log)"
        return "\n".join(text.splitlines()[-lines:])


def run_demo(total: int, workers: int, keep: bool, console: Console) -> bool:
    """Run the whole demo; True when every task was accounted for and all went well."""
    directory = Path(tempfile.mkdtemp(prefix="celeriac-demo-"))
    url = f"sqlite:///{directory / 'demo.db'}"
    app = tasks.app
    # The demo is hermetic: the user's CELERIAC_* settings apply to neither side of it
    # (the worker's environment drops them too), only the throwaway file does.
    app.conf = Settings()
    app.conf.update(broker_url=url, result_backend=url)
    worker = DemoWorker(url, workers, directory)
    console.print(f"Starting a worker ({workers} processes) on {url}", soft_wrap=True)
    try:
        worker.start()
        tracker, elapsed, gave_up = asyncio.run(_drive(app, worker, plan(total), console))
    finally:
        exit_code = worker.stop()
        app.close()
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    ending = Ending(elapsed, workers, exit_code, gave_up)
    console.print(summary(tracker, ending))
    if keep:
        console.print(f"\nKept {directory} (demo.db, worker.log). To list its dead letters:"
                      f"\n  CELERIAC_BROKER_URL={url} celeriac queues --dead",
                      markup=False, soft_wrap=True)
    return tracker.finished and exit_code == 0 and tracker.tallies["reminder"].early == 0


async def _drive(app: App, worker: DemoWorker, calls: list[Call],
                 console: Console) -> tuple[Tracker, float, str | None]:
    try:
        await app.connect()
        await _wait_until_ready(app, worker, console)
        tracker = Tracker(app, [kind.key for kind in KINDS])
        gave_up = await _run_workload(app, worker, calls, tracker, console)
        end = tracker.last_done if tracker.finished and tracker.last_done else time.time()
        return tracker, end - (tracker.first_sent or end), gave_up
    finally:
        await app.aclose()


async def _wait_until_ready(app: App, worker: DemoWorker, console: Console) -> None:
    """Round-trip one ping, so the clock starts with a worker consuming."""
    started = time.monotonic()
    result = await tasks.ping.adelay()
    while True:
        try:
            await result.aget(timeout=0.5)
            break
        except TimeoutError:  # celeriac's TimeoutError is also the builtin one
            worker.check_alive()
            if time.monotonic() - started > STARTUP_TIMEOUT:
                raise DemoError(f"the worker did not answer within {STARTUP_TIMEOUT:.0f} s:\n"
                                f"{worker.log_tail()}") from None
    console.print(f"Worker ready in {time.monotonic() - started:.1f} s.", highlight=False)


async def _run_workload(app: App, worker: DemoWorker, calls: list[Call], tracker: Tracker,
                        console: Console) -> str | None:
    """Send while polling; return why the demo gave up waiting, or None when all finished."""
    started = time.monotonic()
    # Redrawn after each poll rather than on a timer: every frame shows fresh counts.
    with Live(live_view(tracker, worker.processes, 0.0), console=console,
              auto_refresh=False) as live:
        sender = asyncio.create_task(_send(app, calls, tracker))
        last_progress, last_done = time.monotonic(), 0
        while not (sender.done() and tracker.finished):
            await asyncio.sleep(POLL_INTERVAL)
            if sender.done():
                sender.result()  # a failure to send ends the demo now, not after a stall
            await tracker.poll()
            live.update(live_view(tracker, worker.processes, time.monotonic() - started),
                        refresh=True)
            worker.check_alive()
            if tracker.done != last_done:
                last_progress, last_done = time.monotonic(), tracker.done
            elif time.monotonic() - last_progress > STALL_TIMEOUT:
                sender.cancel()
                return f"nothing finished for {STALL_TIMEOUT:.0f} s"
        await sender  # re-raises a failure to send
    return None


async def _send(app: App, calls: list[Call], tracker: Tracker) -> None:
    """Publish the calls in batches; each is checked and encoded as apply_async does it."""
    for start in range(0, len(calls), SEND_BATCH):
        batch = calls[start:start + SEND_BATCH]
        prepared = [app.prepare(call.task.name, call.args, None, call.options, call.task)
                    for call in batch]
        await app.publish([outgoing for _, outgoing in prepared])
        for call, (message, _) in zip(batch, prepared, strict=True):
            tracker.sent(message.id, call.kind, message.eta)
        await asyncio.sleep(0)  # let the poller refresh the display between batches

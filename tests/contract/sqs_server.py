"""A local SQS-compatible server for the tests: ministack (MIT), one per test process.

Started on first use on a loopback port of its own (``python -m ministack`` with only
SQS enabled), waited for with a bound, and stopped at the end of the session. Each test
gets a queue-name prefix of its own, whose queues are deleted after it. Without the
``ministack`` package the tests are skipped, except under CI, where that fails.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

READY_WITHIN = 30.0  # seconds for the server to answer its health check
KEY, SECRET = "celeriac", "not-a-secret"
_server: list[tuple[subprocess.Popen[bytes], str, tempfile.TemporaryDirectory[str]]] = []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def endpoint() -> str:
    """The http:// endpoint of this process's server, started now if need be."""
    if _server:
        return _server[0][1]
    try:
        import ministack  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ministack is not installed (pip install -e '.[dev]')")
        pytest.skip("ministack is not installed")
    port = _free_port()
    home = tempfile.TemporaryDirectory(prefix="celeriac-ministack-")
    env = {**os.environ, "GATEWAY_PORT": str(port), "BIND_HOST": "127.0.0.1",
           "SERVICES": "sqs", "LOG_LEVEL": "WARNING", "TMPDIR": home.name,
           "IOT_MTLS_ENABLED": "0", "SFTP_ENABLED": "0"}
    log = open(os.path.join(home.name, "ministack.log"), "wb")  # noqa: SIM115
    process = subprocess.Popen([sys.executable, "-m", "ministack"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, cwd=home.name)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_WITHIN
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_ministack/health", timeout=1) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(10)
            with open(os.path.join(home.name, "ministack.log"), errors="replace") as f:
                output = f.read()[-2000:]
            home.cleanup()
            pytest.fail(f"ministack did not start within {READY_WITHIN} s: {output}")
        time.sleep(0.1)
    _server.append((process, url, home))
    atexit.register(stop)
    return url


def stop() -> None:
    """Stop this process's server, if one was started."""
    while _server:
        process, _, home = _server.pop()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        home.cleanup()


def broker_url() -> str:
    """An ``sqs://`` URL for the server, in Celery's form: keys and a host."""
    return f"sqs://{KEY}:{SECRET}@{endpoint().removeprefix('http://')}"


def client() -> Any:
    import botocore.session

    return botocore.session.get_session().create_client(
        "sqs", region_name="us-east-1", endpoint_url=endpoint(), aws_access_key_id=KEY,
        aws_secret_access_key=SECRET)


def delete_queues(prefix: str) -> None:
    sqs = client()
    try:
        for url in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []):
            with contextlib.suppress(Exception):
                sqs.delete_queue(QueueUrl=url)
    finally:
        sqs.close()


@contextlib.contextmanager
def namespace(**options: Any) -> Iterator[dict[str, Any]]:
    """Transport options giving one test queues of its own, deleted after it."""
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    try:
        yield {"queue_name_prefix": prefix, **options}
    finally:
        delete_queues(prefix)

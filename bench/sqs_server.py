"""A ministack server (MIT; a local SQS-compatible server) for the ``sqs`` suite.

Started once per suite on a free loopback port, stopped at its end; each session gets
a queue-name prefix of its own. Numbers measured against it show celeriac's costs per
SQS request on this machine, not Amazon's latency (each request to AWS takes
milliseconds over the network, which a worker's batches and fetch rounds amortise).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

READY_WITHIN = 30.0
KEY, SECRET = "bench", "not-a-secret"


class MinistackServer:
    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._home: tempfile.TemporaryDirectory[str] | None = None

    @property
    def broker_url(self) -> str:
        return f"sqs://{KEY}:{SECRET}@127.0.0.1:{self.port}"

    def start(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self._home = tempfile.TemporaryDirectory(prefix="celeriac-bench-ministack-")
        env = {**os.environ, "GATEWAY_PORT": str(self.port), "BIND_HOST": "127.0.0.1",
               "SERVICES": "sqs", "LOG_LEVEL": "WARNING", "TMPDIR": self._home.name,
               "IOT_MTLS_ENABLED": "0", "SFTP_ENABLED": "0"}
        self.process = subprocess.Popen([sys.executable, "-m", "ministack"], env=env,
                                        cwd=self._home.name, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_WITHIN
        while True:
            try:
                url = f"http://127.0.0.1:{self.port}/_ministack/health"
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ministack did not start within {READY_WITHIN} s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None
        if self._home is not None:
            self._home.cleanup()
            self._home = None

"""A private RabbitMQ node for the tests that stop, restart or misconfigure a broker.

The shared RabbitMQ on 127.0.0.1:5672 is used by every helper and test run on the
machine at once; a test that stops it breaks theirs. ``RabbitNode`` starts a second node
of the same installation with everything of its own: node name, AMQP port, Erlang
distribution port, database and log directories, an empty enabled-plugins file, its own
configuration files and Erlang cookie, all in a temporary directory. Only ``epmd`` (the
Erlang port mapper, one per machine) is shared, which is how Erlang nodes coexist.

Optionally the node also listens with TLS, its certificate signed by a certificate
authority made for the test (``TlsFiles``, with the ``cryptography`` library), next to a
second authority the node's certificate does not chain to: a client trusting only the
latter sees an untrusted certificate.

Starting a node takes about 3-6 s on the test machine (most of it the Erlang VM and
RabbitMQ's boot steps), so the fixture keeps one node per test run and gives each test
a vhost of its own on it (``add_vhost``), deleted after the test.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the package's unwrapped script
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# Ports are taken below the kernel's ephemeral range (32768+ here), so that no client
# socket of the machine can be sitting on the port the node is about to listen on.
PORT_RANGE = (21000, 32000)


def free_port(avoid: set[int]) -> int:
    """A TCP port nobody listens on, outside the ephemeral range."""
    for _ in range(200):
        port = secrets.randbelow(PORT_RANGE[1] - PORT_RANGE[0]) + PORT_RANGE[0]
        if port in avoid:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port in {PORT_RANGE}")


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=timeout).close()
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: a CA that signed the node's certificate, and one that did not."""

    trusted_ca: Path  # signed the server certificate: a client trusting it connects
    untrusted_ca: Path  # an unrelated authority: a client trusting only it must refuse
    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> TlsFiles:
        directory.mkdir(parents=True, exist_ok=True)
        trusted_key, trusted = _authority("celeriac test CA")
        _, untrusted = _authority("celeriac untrusted CA")
        server_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(trusted.subject)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
                critical=False)
            .sign(trusted_key, hashes.SHA256())
        )
        files = cls(trusted_ca=directory / "trusted-ca.pem",
                    untrusted_ca=directory / "untrusted-ca.pem",
                    cert=directory / "server.pem", key=directory / "server-key.pem")
        files.trusted_ca.write_bytes(trusted.public_bytes(serialization.Encoding.PEM))
        files.untrusted_ca.write_bytes(untrusted.public_bytes(serialization.Encoding.PEM))
        files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        files.key.write_bytes(server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return files


def _authority(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


class RabbitNode:
    """A RabbitMQ node of the test's own; see the module docstring.

    ``start()`` boots it and waits (bounded) until it accepts AMQP connections;
    ``stop()`` shuts it down (and kills it if it does not go); ``restart()`` is both,
    with the node's database kept, as a server restart.
    """

    def __init__(self, root: Path, *, tls: bool = False) -> None:
        self.root = root
        self.name = f"celeriac-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port(set())
        self.dist_port = free_port({self.port})
        self.tls_port = free_port({self.port, self.dist_port}) if tls else None
        self.tls = TlsFiles.make(root / "tls") if tls else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log = root / "server.log"
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        (root / "enabled_plugins").write_text("")
        (root / "rabbitmq-env.conf").write_text("")  # not the shared node's env file
        (root / "rabbitmq.conf").write_text(self._config())
        self.env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_PID_FILE": str(root / "node.pid"),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        self.started_in: float | None = None  # seconds the last start took

    def _config(self) -> str:
        lines = [f"listeners.tcp.1 = {HOST}:{self.port}",
                 # Small, so that a test's writes never trip a resource alarm on a
                 # nearly full disk of the shared test machine.
                 "disk_free_limit.absolute = 50MB",
                 "log.console = false", "log.file.level = info"]
        if self.tls is not None:
            lines += [f"listeners.ssl.1 = {HOST}:{self.tls_port}",
                      f"ssl_options.cacertfile = {self.tls.trusted_ca}",
                      f"ssl_options.certfile = {self.tls.cert}",
                      f"ssl_options.keyfile = {self.tls.key}",
                      "ssl_options.verify = verify_none",
                      "ssl_options.fail_if_no_peer_cert = false"]
        return "\n".join(lines) + "\n"

    # -- life -------------------------------------------------------------------------

    def start(self) -> RabbitNode:
        if shutil.which("erl") is None or not Path(RABBITMQ_SERVER).exists():
            raise FileNotFoundError("RabbitMQ is not installed (no rabbitmq-server)")
        started = time.monotonic()
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [RABBITMQ_SERVER], env=self.env, cwd=self.root, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = started + START_TIMEOUT
        while not port_open(self.port):
            if self._process.poll() is not None:
                raise AssertionError(f"RabbitMQ node {self.name} exited at start "
                                     f"({self._process.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"RabbitMQ node {self.name} did not open port "
                                     f"{self.port} within {START_TIMEOUT:g}s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.1)
        self.started_in = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Shut the node down: politely, then by signal if it does not go in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run([RABBITMQCTL, "-n", self.name, "shutdown"], env=self.env,
                           capture_output=True, timeout=STOP_TIMEOUT, check=False)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        # (The node's database stays: start() again is a restart with its queues kept.)

    def restart(self) -> float:
        """Stop and start again with the same database; how long it was down."""
        down = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - down

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- administration -----------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        done = subprocess.run([RABBITMQCTL, "-n", self.name, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: "
                                 f"{done.stdout}{done.stderr}")
        return done.stdout

    def add_vhost(self, vhost: str | None = None) -> str:
        """A new vhost where guest may do everything; its name."""
        vhost = vhost or f"t-{uuid.uuid4().hex[:10]}"
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return vhost

    def delete_vhost(self, vhost: str) -> None:
        if self.running:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.ctl("delete_vhost", vhost)

    def url(self, vhost: str = "/", *, user: str = "guest", password: str = "guest",
            tls: bool = False, **query: str) -> str:
        """An ``amqp://`` (or ``amqps://``) URL to this node."""
        from urllib.parse import quote
        scheme, port = ("amqps", self.tls_port) if tls else ("amqp", self.port)
        suffix = "&".join(f"{key}={value}" for key, value in query.items())
        return (f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{HOST}:{port}/"
                f"{quote(vhost, safe='')}" + (f"?{suffix}" if suffix else ""))

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted((self.root / "log").glob("*.log")) if (self.root / "log").exists() else []
        text = "".join(path.read_text(errors="replace") for path in [self._log, *logs]
                       if path.exists())
        return "\n".join(text.splitlines()[-lines:])

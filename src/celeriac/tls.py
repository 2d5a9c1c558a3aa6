"""TLS options in Celery's shapes, read once for every client that connects to a server.

Celery's ``broker_use_ssl`` and ``redis_backend_use_ssl`` take a mapping of TLS options.
Its documentation spells them two ways: redis-py's names for Redis (``ssl_cert_reqs``,
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``) and py-amqp's for RabbitMQ
(``cert_reqs``, ``ca_certs``, ``certfile``, ``keyfile``). celeriac accepts both
spellings for both brokers and turns them into redis-py's names (``normalize``), which
the Redis clients take as they are and ``client_context`` turns into the
``ssl.SSLContext`` of the RabbitMQ clients (aiormq, celeriac's own wire connection, the
blocking publishers and the rpc:// listener). ``True`` means TLS with the defaults.

Verification is on unless switched off: the server's certificate must chain to a trusted
authority (the system's, or ``ssl_ca_certs``) and name the host connected to.
``ssl_certfile``/``ssl_keyfile`` present a client certificate (mutual TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from celeriac.config import suggest
from celeriac.errors import ConfigurationError

# Every option, under its canonical (redis-py) name.
OPTIONS = frozenset({
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path", "ssl_certfile",
    "ssl_keyfile", "ssl_password", "ssl_check_hostname", "ssl_ciphers", "ssl_min_version",
})
# py-amqp's names (Celery's RabbitMQ examples) and aiormq's URL query names.
ALIASES = {
    "cert_reqs": "ssl_cert_reqs", "ca_certs": "ssl_ca_certs", "cafile": "ssl_ca_certs",
    "capath": "ssl_ca_path", "cadata": "ssl_ca_data", "certfile": "ssl_certfile",
    "keyfile": "ssl_keyfile", "password": "ssl_password",
    "check_hostname": "ssl_check_hostname", "ciphers": "ssl_ciphers",
}

PROBE_TIMEOUT = 0.5  # seconds to wait for the answer to ``speaks_tls``'s ClientHello

CERT_REQS = {
    "none": ssl.CERT_NONE, "cert_none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL, "cert_optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED, "cert_required": ssl.CERT_REQUIRED,
}


def normalize(value: Any, setting: str) -> dict[str, Any] | None:
    """``value`` of a ``*_use_ssl`` setting as options under redis-py's names.

    None or False: no TLS asked for (None is returned); True: TLS with the defaults
    (an empty mapping); a mapping: its options, ``ssl_cert_reqs`` made an
    ``ssl.VerifyMode``. An unknown option name is an error naming the closest one.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{setting} must be True or a mapping of TLS options, "
                                 f"not {value!r}")
    options: dict[str, Any] = {}
    known = OPTIONS | set(ALIASES)
    for name, option in value.items():
        canonical = ALIASES.get(name, name)
        if canonical not in OPTIONS:
            raise ConfigurationError(
                f"unknown TLS option {name!r} in {setting}{suggest(str(name), known)}; "
                f"known: {', '.join(sorted(OPTIONS))}")
        options[canonical] = option
    if "ssl_cert_reqs" in options:
        options["ssl_cert_reqs"] = cert_reqs(options["ssl_cert_reqs"])
    return options


def cert_reqs(value: Any) -> ssl.VerifyMode:
    """``ssl_cert_reqs`` as an ``ssl.VerifyMode``: ``ssl.CERT_*`` or its name."""
    if isinstance(value, ssl.VerifyMode):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return ssl.VerifyMode(value)
    mode = CERT_REQS.get(str(value).lower())
    if mode is None:
        raise ConfigurationError(f"ssl_cert_reqs must be none, optional or required "
                                 f"(or ssl.CERT_*), not {value!r}")
    return mode


def client_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    """A client ``SSLContext`` for ``options`` (canonical names, see ``normalize``).

    A file that cannot be read (a wrong path, a key that does not match its
    certificate) is a ``ConfigurationError`` naming the option, raised here, before any
    connection is tried.
    """
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=options.get("ssl_ca_certs"),
            capath=options.get("ssl_ca_path"), cadata=options.get("ssl_ca_data"))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the CA certificates of ssl_ca_certs "
                                 f"{options.get('ssl_ca_certs')!r}: {exc}") from exc
    mode = cert_reqs(options.get("ssl_cert_reqs", ssl.CERT_REQUIRED))
    check_hostname = bool(options.get("ssl_check_hostname", mode == ssl.CERT_REQUIRED))
    if mode == ssl.CERT_NONE or not check_hostname:
        context.check_hostname = False  # must be off before verify_mode may be lowered
    context.verify_mode = mode
    if options.get("ssl_certfile"):
        try:
            context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"),
                                    options.get("ssl_password"))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the client certificate ssl_certfile "
                f"{options['ssl_certfile']!r} / ssl_keyfile "
                f"{options.get('ssl_keyfile')!r}: {exc}") from exc
    if options.get("ssl_ciphers"):
        context.set_ciphers(options["ssl_ciphers"])
    if options.get("ssl_min_version") is not None:
        context.minimum_version = options["ssl_min_version"]
    return context


def from_query(query: Mapping[str, str]) -> dict[str, Any]:
    """The TLS options of an ``amqps://`` URL's query string (aiormq's names:
    ``cafile``, ``certfile``, ``keyfile``, ``no_verify_ssl``), under canonical names."""
    options: dict[str, Any] = {}
    for name in ("cafile", "capath", "certfile", "keyfile"):
        if query.get(name):
            options[ALIASES[name]] = query[name]
    for name in ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if query.get(name):
            options[name] = query[name]
    if query.get("no_verify_ssl", "0") != "0":
        options["ssl_cert_reqs"] = ssl.CERT_NONE
    return options


# -- is that port a TLS port? -------------------------------------------------------------
# A plain client that reaches a TLS port sees its connection dropped, which looks like a
# server restarting. The clients ask these on that failure, to say "use rediss:// /
# amqps://" at once instead of retrying until a timeout.

def _hello() -> bytes:
    """A TLS ClientHello, then a line end: a TLS server answers the hello with a
    handshake record (0x16) or an alert (0x15); a Redis server answers the line at once
    with an error reply or not at all (then the check times out)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read() + b"\r\n"


_TLS_RECORDS = (0x15, 0x16)  # alert, handshake


def speaks_tls(host: str, port: int) -> bool:
    """Whether ``host:port`` answers a ClientHello in TLS (blocking, bounded)."""
    try:
        with socket.create_connection((host, port), PROBE_TIMEOUT) as sock:
            sock.settimeout(PROBE_TIMEOUT)
            sock.sendall(_hello())
            first = sock.recv(1)
    except OSError:
        return False
    return bool(first) and first[0] in _TLS_RECORDS


async def speaks_tls_async(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(_hello())
                first = await reader.read(1)
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    return bool(first) and first[0] in _TLS_RECORDS


def handshake_refusal(host: str, port: int, context: ssl.SSLContext) -> str | None:
    """Why the TLS server at ``host:port`` refuses ``context``'s client, or None.

    With TLS 1.3 the server judges the client's certificate after the handshake has
    completed on the client's side, and its alert ("certificate required") can be lost
    when the client has already sent data (the server's close then resets the
    connection, dropping the alert on the way in). So a TLS connection reset while it
    was being opened is diagnosed here: a handshake with the same context, then a read
    with nothing sent, which receives that alert if there is one (bounded by
    PROBE_TIMEOUT; a server waiting for the client to speak is not refusing it).
    """
    try:
        with socket.create_connection((host, port), PROBE_TIMEOUT) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.settimeout(PROBE_TIMEOUT)
            tls.recv(1)
    except ssl.SSLCertVerificationError as exc:
        return f"TLS certificate verification failed: {exc.verify_message or exc}"
    except ssl.SSLError as exc:
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
            return None
        return f"TLS handshake failed: {exc}"
    except OSError:
        return None
    return None

"""Reaching Amazon SQS: the ``sqs://`` URL, the transport options, and queue names.

Celery's URL forms are taken as they are: ``sqs://`` (credentials from botocore's usual
chain: environment, ``~/.aws``, instance role), ``sqs://KEY:SECRET@`` (percent-encode a
secret holding ``/`` or ``+``), and ``sqs://KEY:SECRET@localhost:4566`` for a local
server (then the host is the endpoint: ``http://`` unless ``is_secure`` is true).

Celery's transport options keep their names where they mean the same here: ``region``,
``queue_name_prefix``, ``visibility_timeout`` (the lease, whole seconds),
``polling_interval`` and ``predefined_queues``. ``wait_time_seconds`` (long polling) is
not used, with a warning saying why: a fetch watches several SQS queues at once (one
per priority band, and the delay queue), and a long poll cannot be stopped without
losing what it took meanwhile (see docs/brokers.md). Unknown options are errors.

Names: a celeriac queue ``q`` is up to ``len(bands) + 1`` SQS queues (``P`` is the
prefix; ``.fifo`` appended to band queues when ``fifo`` is true)::

    P + q          priorities of the lowest band (0 .. 3 by default)
    P + q + "-p4"  the band starting at 4, "-p7" the one at 7
    P + q + "-delayed"   messages waiting for their eta (always a standard queue)
    P + "dead-letters"   the dead letters of every queue of this prefix (standard)

SQS allows ``[A-Za-z0-9_-]`` in names, so other characters of a queue name (and ``-``
itself) are written as ``-<hex code point>-``; the suffixes above can never be produced
by that escape (``p``, ``l`` are not hex digits), so two names never collide.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from celeriac.config import suggest
from celeriac.errors import ConfigurationError
from celeriac.urls import safe_url

logger = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"  # kombu's default too
DEFAULT_LEASE = 10  # seconds, as every other broker's default lease_seconds
DEFAULT_POLLING_INTERVAL = 1.0
DEFAULT_BANDS = (0, 4, 7)  # 0-3, 4-6, 7-9
DEFAULT_CONNECTION_TIMEOUT = 5.0
# SQS's largest message since 2025 (and ministack's default); a queue configured smaller
# refuses larger ones at send, which publish reports as a BrokerError.
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
MAX_VISIBILITY = 43_200  # SQS's longest visibility timeout (12 hours)
MAX_NAME = 80  # SQS's longest queue name, ".fifo" included
DEAD_LETTER_SUFFIX = "dead-letters"
DELAY_SUFFIX = "-delayed"
PREFIX_CHARS = re.compile(r"[A-Za-z0-9_-]*")
PLAIN = re.compile(r"[A-Za-z0-9_]")

OPTIONS = frozenset({
    "region", "queue_name_prefix", "visibility_timeout", "lease_seconds",
    "polling_interval", "predefined_queues", "endpoint_url", "is_secure", "fifo",
    "priority_bands", "max_message_size", "connection_timeout", "ssl",
    "wait_time_seconds",
})


@dataclass(frozen=True)
class PredefinedQueue:
    """A queue made outside celeriac (Celery's ``predefined_queues``): its URL serves
    every priority (ordered within a fetch only), ``delay_url`` its eta messages."""

    url: str
    delay_url: str | None = None


@dataclass(frozen=True)
class SqsSettings:
    url: str  # as given, for messages (printed through safe_url)
    region: str
    endpoint_url: str | None
    access_key: str | None
    secret_key: str | None
    prefix: str
    lease: int  # whole seconds
    polling_interval: float
    bands: tuple[int, ...]
    fifo: bool
    max_message_size: int
    connection_timeout: float
    predefined: Mapping[str, PredefinedQueue] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str, options: Mapping[str, Any]) -> SqsSettings:
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise ConfigurationError(f"unknown SQS transport option {unknown[0]!r}"
                                     f"{suggest(unknown[0], OPTIONS)}")
        if options.get("wait_time_seconds") is not None:
            # Kept working, as the Redis broker does with kombu's options it has no use
            # for: a project moving from Celery still has it set.
            logger.warning(
                "SQS transport option wait_time_seconds=%r is not used: a fetch watches "
                "one SQS queue per priority band and a delay queue, and polls them every "
                "polling_interval seconds (default 1.0) while idle (a send from the same "
                "process wakes it at once); set polling_interval instead",
                options["wait_time_seconds"])
        access, secret, endpoint = _parse_url(url, bool(options.get("is_secure", False)),
                                              options.get("ssl"))
        given_endpoint = options.get("endpoint_url")
        if given_endpoint is not None:
            if not isinstance(given_endpoint, str) or not given_endpoint.startswith(
                    ("http://", "https://")):
                raise ConfigurationError(f"SQS transport option endpoint_url must be an "
                                         f"http:// or https:// URL, not {given_endpoint!r}")
            if endpoint is not None and endpoint != given_endpoint.rstrip("/"):
                raise ConfigurationError(
                    f"the SQS URL {safe_url(url)} names the endpoint {endpoint} and the "
                    f"endpoint_url option {given_endpoint}: give one of them")
            endpoint = given_endpoint.rstrip("/")
        region = options.get("region", DEFAULT_REGION)
        if not isinstance(region, str) or not re.fullmatch(r"[a-z0-9-]+", region):
            raise ConfigurationError(f"SQS transport option region must be a region name "
                                     f"such as 'eu-west-1', not {region!r}")
        prefix = options.get("queue_name_prefix", "")
        if not isinstance(prefix, str) or not PREFIX_CHARS.fullmatch(prefix) \
                or len(prefix) > 40:
            raise ConfigurationError(
                f"SQS transport option queue_name_prefix must be at most 40 of the "
                f"characters SQS allows in names (A-Z a-z 0-9 _ -), not {prefix!r}")
        fifo = options.get("fifo", False)
        if not isinstance(fifo, bool):
            raise ConfigurationError(f"SQS transport option fifo must be True or False, "
                                     f"not {fifo!r}")
        return cls(
            url=url, region=region, endpoint_url=endpoint, access_key=access,
            secret_key=secret, prefix=prefix, lease=_lease(options),
            polling_interval=_positive(options, "polling_interval",
                                       DEFAULT_POLLING_INTERVAL),
            bands=_bands(options.get("priority_bands", DEFAULT_BANDS)), fifo=fifo,
            max_message_size=int(_positive(options, "max_message_size",
                                           DEFAULT_MAX_MESSAGE_SIZE, whole=True)),
            connection_timeout=_positive(options, "connection_timeout",
                                         DEFAULT_CONNECTION_TIMEOUT),
            predefined=_predefined(options.get("predefined_queues")))

    # -- names ----------------------------------------------------------------------------

    def band_of(self, priority: int) -> int:
        """The lowest priority of the band ``priority`` falls in."""
        return max(low for low in self.bands if low <= priority)

    def band_name(self, queue: str, band: int) -> str:
        name = self.prefix + escape(queue) + (f"-p{band}" if band else "")
        return self._checked(name + (".fifo" if self.fifo else ""), queue)

    def delay_name(self, queue: str) -> str:
        return self._checked(self.prefix + escape(queue) + DELAY_SUFFIX, queue)

    def dead_letter_name(self) -> str:
        return self.prefix + DEAD_LETTER_SUFFIX  # a standard queue, FIFO or not

    def queue_of(self, sqs_name: str) -> str | None:
        """The celeriac queue an SQS queue name of this prefix belongs to, else None."""
        if not sqs_name.startswith(self.prefix):
            return None
        name = sqs_name[len(self.prefix):].removesuffix(".fifo")
        if name == DEAD_LETTER_SUFFIX:
            return None
        name = name.removesuffix(DELAY_SUFFIX)
        band = re.fullmatch(r"(.*)-p([1-9])", name)
        if band:
            name = band.group(1)
        return unescape(name)

    def _checked(self, name: str, queue: str) -> str:
        if len(name) > MAX_NAME:
            raise ValueError(f"queue name {queue!r} is too long for SQS: its queue "
                             f"{name!r} has {len(name)} characters, at most {MAX_NAME}")
        return name


def escape(queue: str) -> str:
    """``queue`` in the characters SQS allows: others (and ``-``) as ``-<hex>-``."""
    return "".join(char if PLAIN.match(char) else f"-{ord(char):x}-" for char in queue)


def unescape(name: str) -> str | None:
    """``escape`` undone; None for a name no ``escape`` makes."""
    parts = name.split("-")
    if len(parts) % 2 == 0:
        return None
    out = []
    for n, part in enumerate(parts):
        if n % 2 == 0:
            out.append(part)
        elif re.fullmatch(r"[0-9a-f]+", part):
            out.append(chr(int(part, 16)))
        else:
            return None
    return "".join(out)


def _parse_url(url: str, is_secure: bool,
               ssl: Any) -> tuple[str | None, str | None, str | None]:
    """(access key, secret key, endpoint) from an ``sqs://`` URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"malformed SQS URL {safe_url(url)!r}: {exc}") from None
    if parts.scheme != "sqs":
        raise ConfigurationError(f"not an sqs:// URL: {safe_url(url)!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(
            f"an SQS URL names no path or query ({safe_url(url)!r}): use the transport "
            f"options region and queue_name_prefix")
    if isinstance(ssl, Mapping):
        raise ConfigurationError("broker_use_ssl options are not used by the SQS broker: "
                                 "botocore checks certificates itself (AWS_CA_BUNDLE)")
    access = unquote(parts.username) if parts.username else None
    secret = unquote(parts.password) if parts.password else None
    if (access is None) != (secret is None):
        raise ConfigurationError(f"the SQS URL {safe_url(url)!r} must give both the "
                                 f"access key and the secret key, or neither")
    endpoint = None
    if parts.hostname:
        scheme = "https" if is_secure or ssl else "http"
        endpoint = f"{scheme}://{parts.hostname}" + (f":{port}" if port else "")
    return access, secret, endpoint


def _lease(options: Mapping[str, Any]) -> int:
    """The lease in whole seconds, from lease_seconds or Celery's visibility_timeout."""
    given = {name: options[name] for name in ("lease_seconds", "visibility_timeout")
             if options.get(name) is not None}
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not 0 < value <= MAX_VISIBILITY:
            raise ConfigurationError(f"SQS transport option {name} must be a number of "
                                     f"seconds > 0 and <= {MAX_VISIBILITY}, not {value!r}")
    leases = {math.ceil(value) for value in given.values()}
    if len(leases) > 1:
        raise ConfigurationError(
            f"SQS transport options lease_seconds={given['lease_seconds']!r} and "
            f"visibility_timeout={given['visibility_timeout']!r} contradict each other; "
            f"give one (they are the same thing: SQS's visibility timeout)")
    # SQS counts visibility in whole seconds: a fractional lease is rounded up.
    return leases.pop() if leases else DEFAULT_LEASE


def _positive(options: Mapping[str, Any], name: str, default: float,
              whole: bool = False) -> float:
    value = options.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float) \
            or not math.isfinite(value) or value <= 0:
        kind = "a whole number" if whole else "a number"
        raise ConfigurationError(f"SQS transport option {name} must be {kind} > 0, "
                                 f"not {value!r}")
    return float(value)


def _bands(value: Any) -> tuple[int, ...]:
    if isinstance(value, list | tuple) and value and all(
            type(low) is int for low in value):
        bands = tuple(value)
        if bands[0] == 0 and list(bands) == sorted(set(bands)) and bands[-1] <= 9:
            return bands
    raise ConfigurationError(
        f"SQS transport option priority_bands must be increasing priorities starting at "
        f"0, each the lowest of its band, such as [0, 4, 7] (0-3, 4-6, 7-9) or [0] "
        f"(one queue, priorities ordered within a fetch only), not {value!r}")


def _predefined(value: Any) -> dict[str, PredefinedQueue]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"SQS transport option predefined_queues must be a "
                                 f"mapping of queue names to {{'url': ...}}, not {value!r}")
    found = {}
    for name, spec in value.items():
        extra = set(spec) - {"url", "delay_url"} if isinstance(spec, Mapping) else set()
        if not isinstance(spec, Mapping) or not isinstance(spec.get("url"), str) or extra:
            hint = ""
            if extra & {"access_key_id", "secret_access_key"}:
                hint = " (per-queue credentials are not supported: give them in the URL)"
            raise ConfigurationError(
                f"predefined_queues[{name!r}] must be {{'url': QUEUE_URL}} and may give "
                f"'delay_url' (a standard queue for its eta messages), not {spec!r}{hint}")
        found[str(name)] = PredefinedQueue(spec["url"], spec.get("delay_url"))
    return found

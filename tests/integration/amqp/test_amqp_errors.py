"""Connection errors say what is wrong, at once (issue 10, part 5), on RabbitMQ.

Permanent causes (a refused login, an unknown vhost, an untrusted TLS certificate)
raise ``BrokerRefused`` (``BackendRefused`` for ``rpc://``) with RabbitMQ's or the TLS
library's own words, in well under a second, on every path: the worker's ``connect()``
and ``fetch()``, the async publish (aiormq), the sync ``delay()`` (``amqp_blocking``).
Transient ones (a closed port, a reset) are retried within the publish timeout, and
when it runs out ``BrokerUnavailable`` names the last real cause and chains it.

Everything runs against the private RabbitMQ node, which has a TLS listener too
(``rabbit_node``); nothing here touches the shared one.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
from fault_proxy import FaultProxy
from rabbit_harness import Rabbit
from rabbit_node import RabbitNode, free_port

from celeriac import App
from celeriac.backends.rpc import RPCBackend
from celeriac.brokers import Broker, Outgoing, create_broker
from celeriac.brokers.amqp import AMQPBroker
from celeriac.errors import BackendError, BackendRefused, BrokerRefused, BrokerUnavailable

# What a refused connection may take: a round trip or two, never a timeout. The
# defaults stay (connect 4 s, publish 10 s), so a retried refusal could not pass.
AT_ONCE = 2.0

Cause = Callable[[RabbitNode, str], str]  # (node, vhost) -> URL that is refused

CAUSES: dict[str, tuple[Cause, str]] = {
    "wrong password": (lambda node, vhost: node.url(vhost, password="wrong"),
                       "ACCESS_REFUSED"),
    "unknown vhost": (lambda node, vhost: node.url(f"missing-{uuid.uuid4().hex[:6]}"),
                      "NOT_ALLOWED"),
    "untrusted certificate": (
        lambda node, vhost: node.url(vhost, tls=True, cafile=str(node.tls.untrusted_ca)
                                     if node.tls else ""),
        "certificate"),
}


def out(queue: str = "q") -> Outgoing:
    return Outgoing(uuid.uuid4().hex, queue, b"body", 0)


@pytest.fixture(scope="module")
def node_vhost(rabbit_node: RabbitNode) -> Iterator[tuple[RabbitNode, str]]:
    """One vhost on the private node for this module's tests that store nothing there
    (they are refused, or read back what they wrote): making one costs about 1.5 s."""
    if not rabbit_node.running:
        rabbit_node.start()
    server = Rabbit(rabbit_node)
    try:
        yield rabbit_node, server.vhost
    finally:
        server.close()


@pytest.fixture
def closing() -> Iterator[list[Broker | App]]:
    made: list[Broker | App] = []
    yield made
    for thing in made:
        if isinstance(thing, App):
            thing.close()
        else:
            if isinstance(thing, AMQPBroker):
                thing.close_blocking()
            asyncio.run(thing.close())


def on_a_loop(broker: Broker, call: Callable[[], Awaitable[object]]) -> object:
    """``call`` on a new event loop, and the broker's connections on it closed before the
    loop ends, as a program using ``asyncio.run`` would (even when ``call`` raised)."""

    async def run() -> object:
        try:
            return await call()
        finally:
            await broker.close()

    return asyncio.run(run())


def timed(action: Callable[[], object], error: type[Exception]) -> tuple[Exception, float]:
    started = time.monotonic()
    with pytest.raises(error) as caught:
        action()
    return caught.value, time.monotonic() - started


@pytest.mark.parametrize("path", ["connect", "fetch", "async publish", "sync delay"])
@pytest.mark.parametrize("cause", list(CAUSES))
def test_a_permanent_refusal_fails_at_once_with_its_real_cause(
        node_vhost: tuple[RabbitNode, str], closing: list[Broker | App], cause: str,
        path: str) -> None:
    # Given a broker URL RabbitMQ refuses for good
    node, vhost = node_vhost
    make_url, words = CAUSES[cause]
    url = make_url(node, vhost)

    # When a worker connects or fetches, or a producer sends (async or sync)
    if path == "sync delay":
        app = App("errors", broker=url, backend="memory://")
        closing.append(app)

        @app.task
        def noop() -> None: ...

        action: Callable[[], object] = noop.delay
    else:
        broker = create_broker(url, {})
        closing.append(broker)
        action = {
            "connect": lambda: on_a_loop(broker, broker.connect),
            "fetch": lambda: on_a_loop(broker, lambda: broker.fetch(["q"], 1, 1.0)),
            "async publish": lambda: on_a_loop(broker, lambda: broker.publish([out()])),
        }[path]
    error, took = timed(action, BrokerRefused)

    # Then it fails at once, with RabbitMQ's (or TLS's) own words, never a timeout
    assert took < AT_ONCE, f"{path} took {took:.2f}s to report {error!r} from {_chain(error)}"
    assert words in str(error)
    assert "took over" not in str(error)
    assert "timed out" not in str(error)
    assert "wrong" not in str(error)  # the password never appears in an error


def test_a_trusted_certificate_connects(node_vhost: tuple[RabbitNode, str],
                                        closing: list[Broker | App]) -> None:
    # Given the same TLS listener, with its own certificate authority trusted
    node, vhost = node_vhost
    assert node.tls is not None
    broker = create_broker(node.url(vhost, tls=True, cafile=str(node.tls.trusted_ca)), {})
    assert isinstance(broker, AMQPBroker)
    closing.append(broker)

    # Then both publish paths and the consumer work (so the refusals above are the
    # certificate's, not a broken listener's)
    broker.publish_blocking([out()])

    async def round_trip() -> int:
        await broker.publish([out()])
        got = await broker.fetch(["q"], 2, 5.0)
        await broker.ack(got)
        await broker.close()
        return len(got)

    assert asyncio.run(round_trip()) == 2


@pytest.mark.parametrize("path", ["async publish", "sync publish", "connect"])
def test_a_closed_port_is_retried_until_the_timeout_then_names_its_cause(
        closing: list[Broker | App], path: str) -> None:
    # Given a broker URL on a port nobody listens on, a 1.5 s publish timeout
    url = f"amqp://guest:guest@127.0.0.1:{free_port(set())}/"
    broker = create_broker(url, {"publish_timeout": 1.5, "connection_timeout": 0.5})
    assert isinstance(broker, AMQPBroker)
    closing.append(broker)
    action = {"async publish": lambda: on_a_loop(broker, lambda: broker.publish([out()])),
              "sync publish": lambda: broker.publish_blocking([out()]),
              "connect": lambda: on_a_loop(broker, broker.connect)}[path]

    # When a message is sent (or a worker connects)
    error, took = timed(action, BrokerUnavailable)

    # Then it is BrokerUnavailable (transient, not refused), within the timeout, and it
    # says and chains the real cause, not a timeout of its own
    assert not isinstance(error, BrokerRefused)
    assert "ConnectionRefusedError" in str(error)
    assert "took over" not in str(error)
    assert isinstance(_root(error), ConnectionRefusedError)
    if path != "connect":  # connect() tries once: the worker's own loop retries it
        assert 1.4 < took < 4.0


def test_a_connection_reset_at_connect_is_retried_within_the_timeout(
        node_vhost: tuple[RabbitNode, str], closing: list[Broker | App]) -> None:
    # Given a proxy that resets every new connection for 0.8 s (a flapping link)
    node, vhost = node_vhost
    proxy = FaultProxy(node.port)
    try:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}"
        broker = create_broker(url, {"publish_timeout": 6, "connection_timeout": 1})
        assert isinstance(broker, AMQPBroker)
        closing.append(broker)
        proxy.refuse()
        threading.Timer(0.8, proxy.restore).start()

        # When a producer sends through it, sync then async
        started = time.monotonic()
        broker.publish_blocking([out()])
        on_a_loop(broker, lambda: broker.publish([out()]))

        # Then both went through once the link came back, after retries (not refused)
        assert 0.7 < time.monotonic() - started < 6
        assert proxy.accepted >= 3
    finally:
        proxy.close()


def test_rpc_results_on_a_refused_login_fail_at_once(
        node_vhost: tuple[RabbitNode, str], closing: list[Broker | App]) -> None:
    # Given a producer whose broker is fine but whose rpc:// results server refuses it
    node, vhost = node_vhost
    rpc_url = node.url(vhost, password="wrong").replace("amqp://", "rpc://", 1)
    app = App("errors", broker=node.url(vhost), backend=rpc_url)
    closing.append(app)

    @app.task
    def noop() -> None: ...

    # When it sends a task (which sets up its reply queue first)
    error, took = timed(noop.delay, BackendRefused)

    # Then the send fails at once with ACCESS_REFUSED, and again on the next try
    assert took < AT_ONCE
    assert "ACCESS_REFUSED" in str(error)
    error, took = timed(noop.delay, BackendRefused)
    assert took < AT_ONCE
    # And a worker publishing results there is refused at once too
    assert app.backend is not None
    error, took = timed(lambda: asyncio.run(app.backend.open_wire()),  # type: ignore[attr-defined]
                        BackendRefused)
    assert took < AT_ONCE
    assert "ACCESS_REFUSED" in str(error)


def _root(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


@pytest.mark.parametrize("path", ["async publish", "sync publish"])
def test_a_publish_the_user_may_not_make_fails_at_once(
        private_rabbit: Rabbit, closing: list[Broker | App], path: str) -> None:
    # Given a user who may declare and read in the vhost, but not write (publish)
    private_rabbit.ctl("set_permissions", "-p", private_rabbit.vhost, "guest", ".*", "", ".*")
    broker = create_broker(private_rabbit.url(), {})
    assert isinstance(broker, AMQPBroker)
    closing.append(broker)
    action = {"async publish": lambda: on_a_loop(broker, lambda: broker.publish([out()])),
              "sync publish": lambda: broker.publish_blocking([out()])}[path]

    # When a message is published, then RabbitMQ's ACCESS_REFUSED is raised at once
    error, took = timed(action, BrokerRefused)
    assert took < AT_ONCE, f"{path} took {took:.2f}s to report {error!r} from {_chain(error)}"
    assert "ACCESS_REFUSED" in str(error)


def test_rpc_results_through_a_flapping_link_are_retried_then_name_their_cause(
        node_vhost: tuple[RabbitNode, str]) -> None:
    # Given an rpc:// backend whose server resets every new connection (a proxy)
    node, vhost = node_vhost
    proxy = FaultProxy(node.port)
    backend = RPCBackend(f"rpc://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
                         {"connection_timeout": 1.5})
    try:
        proxy.refuse()

        # When a producer sends while it lasts: BackendError (transient, not refused)
        # once the timeout is spent, naming the reset
        error, took = timed(backend.message_headers, BackendError)
        assert not isinstance(error, BackendRefused)
        assert 1.4 < took < 3.0
        assert "ConnectionResetError" in str(error)
        assert isinstance(_root(error), ConnectionResetError)

        # And when the link comes back within a send's timeout, the send goes through
        threading.Timer(0.5, proxy.restore).start()
        assert backend.message_headers() == {"reply_to": backend.reply_queue}
    finally:
        backend.close_blocking()
        proxy.close()


def _chain(error: BaseException | None) -> list[str]:
    """Every exception behind ``error`` (causes and contexts), for a failure message."""
    seen: list[str] = []
    while error is not None and len(seen) < 10:
        seen.append(repr(error))
        error = error.__cause__ or error.__context__
    return seen

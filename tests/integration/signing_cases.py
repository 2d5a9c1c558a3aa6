"""Signed and encrypted messages against one running worker, the same on every broker.

``check_signing`` runs every case of issue 15's items 1 and 2 against one worker
process started with ``worker_settings()`` (one worker per broker: starting workers is
what costs time):

- refused, each published raw as anyone with broker credentials could: unsigned,
  tampered with (one byte of the frame changed), signed with another secret under a
  listed key id, signed with a key id the worker does not list, signed for another
  queue, signed too long ago, and a copy of a message that already ran (a replay).
  Each ends in the dead letters with its reason (``unsigned:``, ``bad_signature:``,
  ``replay:``), its body untouched, and runs nothing: the ledger, the file every run
  of a ledger task appends to, never gets its tag;
- rotation overlap: a producer still signing with the old key and one signing with the
  new key both get their tasks run while the worker lists both keys; so does one that
  holds only an Ed25519 private key, whose public key the worker lists beside them;
- a retry is signed anew by the worker (the ``flaky`` task fails once, then succeeds);
- encryption: a task sent with ``task_encryption`` to a queue nobody consumes yet is
  read back raw from the server (SQLite or PostgreSQL row, Redis stream entry, RabbitMQ
  message): neither its argument nor its task name is in the bytes; then the worker
  consumes the queue (``add_consumer``), runs it, and its result, stored encrypted
  (``result_encryption``), has no readable value on the backend either, while the
  producer reads it back.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from typing import Any

from ledger_app import LedgerTasks, register
from malformed_cases import CODEC, envelope
from worker_harness import QUEUE, Deployment, wait_until

from celeriac import App
from celeriac.backends import create_backend
from celeriac.brokers import DeadLetter, Outgoing
from celeriac.security import generate_encryption_key, generate_signing_key_pair
from celeriac.security.signing import Signer

OLD_ID, NEW_ID = "2026-11", "2026-12"
OLD_SECRET = "old-" + "o" * 40
NEW_SECRET = "new-" + "n" * 40
ED_ID = "web-2027-01"  # an Ed25519 pair: the producer signs, the worker lists the public key
ED_PRIVATE, ED_PUBLIC = generate_signing_key_pair()
ENCRYPTION_ID = "e-2026-12"
ENCRYPTION_KEY = generate_encryption_key()
MAX_AGE = 600.0
VAULT = "vault"  # the queue the encrypted task waits in until the worker consumes it


def worker_settings() -> dict[str, Any]:
    """The worker's settings: both signing keys (rotation), encryption keys."""
    return {"task_signing_keys": {OLD_ID: OLD_SECRET, NEW_ID: NEW_SECRET},
            "task_signing_public_keys": {ED_ID: ED_PUBLIC},
            "task_signing_key_id": NEW_ID, "task_signing_max_age": MAX_AGE,
            "task_encryption_keys": {ENCRYPTION_ID: ENCRYPTION_KEY},
            "task_encryption_key_id": ENCRYPTION_ID, "result_encryption": True}


def _producer(deployment: Deployment, key_id: str, secret: str | None,
              **settings: Any) -> tuple[App, LedgerTasks]:
    if secret is not None:
        settings["task_signing_keys"] = {key_id: secret}
    app = deployment.make_app(task_signing_key_id=key_id,
                              task_encryption_keys={ENCRYPTION_ID: ENCRYPTION_KEY},
                              task_encryption_key_id=ENCRYPTION_ID, result_encryption=True,
                              **settings)
    return app, register(app)


def _frame(tag: str, queue: str = QUEUE) -> bytes:
    return CODEC.encode(envelope(args=[tag], queue=queue))


def _signed(tag: str, key_id: str = NEW_ID, secret: str = NEW_SECRET,
            queue: str = QUEUE, now: float | None = None) -> bytes:
    return Signer(key_id, secret=secret.encode()).sign(_frame(tag), queue, now=now)


def _tampered(tag: str) -> bytes:
    body = bytearray(_signed(tag))
    at = body.index(tag.encode())
    body[at] ^= 0x01  # one bit of the argument
    return bytes(body)


def refused_cases(prefix: str) -> dict[str, tuple[bytes, str]]:
    """Outgoing id -> (body, words its dead-letter reason starts with)."""
    cases = {
        "unsigned": (_frame("refused-unsigned"), "unsigned: the message carries no "
                     "signature"),
        "tampered": (_tampered("refused-tampered"), "bad_signature: the signature"),
        "wrong-secret": (_signed("refused-wrong-secret", secret="x" * 44),
                         "bad_signature: the signature (key id '2026-12') does not match"),
        "unknown-key": (_signed("refused-unknown-key", key_id="rogue", secret="x" * 44),
                        "bad_signature: signed with the HMAC-SHA256 key 'rogue', which "
                        "this worker does not list"),
        "wrong-queue": (_signed("refused-wrong-queue", queue="other"),
                        "bad_signature: the signature"),
        "too-old": (_signed("refused-too-old", now=time.time() - 2 * MAX_AGE),
                    "replay: signed"),
    }
    return {f"{prefix}-{name}": case for name, case in cases.items()}


def stored_bodies(deployment: Deployment, queue: str) -> list[bytes]:
    """The bytes of the messages waiting in ``queue``, read from the server directly."""
    url = deployment.url
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return [bytes(row[0]) for row in conn.execute(
                "SELECT body FROM messages WHERE queue = ?", (queue,))]
    if url.startswith("redis"):
        import redis

        broker: Any = deployment.probe.broker
        client = redis.Redis.from_url(broker.settings.url)
        try:
            return [fields[b"b"] for band in range(10)
                    for _, fields in client.xrange(broker.stream_key(queue, band))]
        finally:
            client.close()
    if url.startswith("postgres"):
        import psycopg

        settings = deployment.probe.broker.settings  # type: ignore[attr-defined]
        with psycopg.connect(settings.conninfo) as conn:
            return [bytes(row[0]) for row in conn.execute(
                f'SELECT body FROM "{settings.schema}".celeriac_messages WHERE queue = %s',
                (queue,))]
    return asyncio.run(_amqp_bodies(url, queue))


async def _amqp_bodies(url: str, queue: str) -> list[bytes]:
    """Every message of a RabbitMQ queue, got and handed back (basic.get, then close)."""
    import aiormq

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        bodies = []
        while True:
            message = await channel.basic_get(queue, no_ack=False)
            if message.delivery is None or not message.body:
                break
            bodies.append(bytes(message.body))
        return bodies  # closing the connection hands them back, unacked
    finally:
        await connection.close()


def check_signing(deployment: Deployment, timeout: float = 30.0) -> dict[str, DeadLetter]:
    """Every case of the module docstring, against one running worker."""
    prefix = uuid.uuid4().hex[:8]
    new_app, new = _producer(deployment, NEW_ID, NEW_SECRET)
    # Given a worker that has run a task signed with the new key (up and consuming)
    assert new.record.delay("before").get(timeout=timeout) == "before"
    # When a producer still on the old key sends, and the worker retries a task
    _, old = _producer(deployment, OLD_ID, OLD_SECRET)
    rotated = old.record.delay("rotated-old")
    # (and one holding only an Ed25519 private key, whose public key the worker lists)
    _, ed = _producer(deployment, ED_ID, None, task_signing_private_key=ED_PRIVATE)
    split = ed.record.delay("ed25519")
    flaky = new.flaky.delay("flaky-once", 1)
    # And a message that ran is published again, unchanged (a replay)
    first = new_app.prepare("ledger.record", ["replayed"], {}, {})[1]
    deployment.probe.publish([first])
    deployment.ledger.wait_for("replayed", timeout=timeout)
    replay_id = f"{prefix}-replay"
    deployment.probe.publish([Outgoing(replay_id, QUEUE, first.body)])
    # And the forged, changed and stale messages arrive
    cases = refused_cases(prefix)
    deployment.probe.publish([Outgoing(i, QUEUE, body) for i, (body, _) in cases.items()])
    # (its first copy may still wait for its ack: then it is "being run", else "has run")
    cases[replay_id] = (first.body, "replay: a message with this signature ")
    # Then the old key's task and the retried task ran
    assert rotated.get(timeout=timeout) == "rotated-old"
    assert split.get(timeout=timeout) == "ed25519"
    assert flaky.get(timeout=timeout) == "flaky-once"
    assert [e.tag for e in deployment.ledger.entries() if e.tag == "flaky-once"] == \
        ["flaky-once", "flaky-once"]  # (the first attempt failed, the retry ran)

    # And each refused one is in the dead letters with its reason, body untouched
    def letters() -> dict[str, DeadLetter] | None:
        found = {d.id: d for d in deployment.probe.dead_letters() if d.id in cases}
        return found if len(found) == len(cases) else None

    found = wait_until(letters, timeout, "every refused message in the dead letters")
    wrong = {i: (found[i].reason, words) for i, (_, words) in cases.items()
             if not found[i].reason.startswith(words)}
    assert not wrong, f"dead-letter reasons not as expected: {wrong}"
    assert all(found[i].body == body for i, (body, _) in cases.items())
    # And none of them ran: the ledger has no entry for any of them
    ran = deployment.ledger.tags()
    assert not [tag for tag in ran if str(tag).startswith("refused-")], ran
    assert ran.count("replayed") == 1
    _, sealed = _producer(deployment, NEW_ID, NEW_SECRET, task_encryption=True)
    check_encrypted(deployment, sealed, timeout)
    return found


def check_encrypted(deployment: Deployment, tasks: LedgerTasks, timeout: float) -> None:
    """An encrypted task: unreadable while it waits on the server, run, its result
    unreadable on the backend and read back by the producer."""
    secret = f"secret-{uuid.uuid4().hex[:8]}"
    sent = tasks.record.apply_async([secret], queue=VAULT)  # (nobody consumes it yet)
    raw = wait_until(lambda: stored_bodies(deployment, VAULT), timeout,
                     "the encrypted message on the server")
    assert len(raw) == 1
    assert secret.encode() not in raw[0], raw[0][:200]
    assert b"ledger.record" not in raw[0], raw[0][:200]
    # When the worker consumes that queue too
    deployment.app.control.add_consumer(VAULT)
    # Then it runs, and its result is unreadable on the backend but read by the producer
    assert sent.get(timeout=timeout) == secret
    stored = asyncio.run(_stored_result(deployment.app.conf.effective_result_backend,
                                        sent.id))
    assert secret.encode() not in stored
    assert stored[:2] == b"CE"


async def _stored_result(url: str, task_id: str) -> bytes:
    """A result's bytes as the backend's server keeps them."""
    backend = create_backend(url)
    await backend.connect()
    try:
        return (await backend.load_many([task_id]))[task_id]
    finally:
        await backend.close()

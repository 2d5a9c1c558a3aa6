"""Signed and encrypted messages on Redis (``signing_cases``), under this test's own key
prefix: refusals, rotation, re-signed retries, a payload unreadable in the stream, nonces
kept on the server."""

from __future__ import annotations

import asyncio
import time

import redis
from redis_harness import RedisDeployment
from signing_cases import check_signing, worker_settings


def test_signed_worker_refuses_forgeries_and_runs_signed_and_encrypted_tasks(
        deployment: RedisDeployment) -> None:
    deployment.start_worker("-c", "2", **worker_settings()).wait_ready()
    check_signing(deployment)
    # And the nonces seen are on the server (every worker process and node agrees)
    broker = deployment.probe.broker
    client = redis.Redis.from_url(broker.settings.url)  # type: ignore[attr-defined]
    try:
        seen = list(client.scan_iter(match=f"{broker.prefix}seen:*"))  # type: ignore[attr-defined]
    finally:
        client.close()
    assert seen


def test_nonces_on_redis_are_kept_per_minute_and_refuse_copies_until_they_expire(
        shared_redis: str) -> None:
    from celeriac import App
    from celeriac.security.replay import BUCKET, DONE, RedisSeenNonces, seen_nonces
    from celeriac.security.signing import Signer, Verifier

    app = App("nonces", broker=shared_redis, backend=shared_redis)
    store = seen_nonces(app)
    assert isinstance(store, RedisSeenNonces)
    signer, verifier = Signer("k", secret=b"s" * 32), Verifier({"k": b"s" * 32}, {}, 600)
    now = time.time()
    # Two messages a bucket apart (one due later), and the first one twice in the batch
    first = verifier.open(signer.sign(b"frame", "q", now=now), "q", now)
    later = verifier.open(signer.sign(b"frame", "q", due=now + BUCKET, now=now), "q", now)

    async def scenario() -> None:
        assert await store.claim([first, later, first], "w1") == [None, None, "w1"]
        assert await store.claim([later, first], "w2") == ["w1", "w1"]  # held: copies
        await store.release([first], "w2")  # not its claim: kept
        assert await store.claim([first], "w2") == ["w1"]
        await store.release([first], "w1")  # handed back unstarted: new again
        assert await store.claim([first], "w2") == [None]
        await store.done([first])
        assert await store.claim([first], "w3") == [DONE]
        # A batch larger than a Lua call takes arguments (a big prefetch)
        big = [verifier.open(signer.sign(b"f", "q", now=now), "q", now) for _ in range(4500)]
        assert await store.claim(big, "w1") == [None] * 4500
        assert await store.claim(big[::-1], "w2") == ["w1"] * 4500
        await store.done(big)
        assert set(await store.claim(big, "w2")) == {DONE}

    asyncio.run(scenario())
    prefix = app.broker.prefix  # type: ignore[attr-defined]
    client = redis.Redis.from_url(app.broker.settings.url)  # type: ignore[attr-defined]
    try:
        keys = sorted(client.scan_iter(match=f"{prefix}seen:*"))
        assert len(keys) == 2  # one hash per bucket, a field per nonce
        for key, opened in zip(keys, (first, later), strict=True):
            assert client.type(key) == b"hash"
            assert opened.nonce in client.hkeys(key)
            # kept at least until its message's validity (and the margin) ends
            assert client.pttl(key) >= (opened.valid_until + 60 - time.time()) * 1000 - 1000
    finally:
        client.close()

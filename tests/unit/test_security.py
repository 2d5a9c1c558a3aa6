"""Signing, encryption and replay protection (celeriac.security): the primitives, the
settings, and one consumer on the memory broker that runs what is signed."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from celeriac import App, ConfigurationError, Reject, signals
from celeriac.brokers import DeadLetter, Delivery, Outgoing
from celeriac.control.secrets import masked_settings
from celeriac.errors import BrokerError, DecodeError
from celeriac.monitor.metrics import Collector, render, task_families
from celeriac.monitor.tally import TaskTally
from celeriac.security import generate_encryption_key, generate_signing_key_pair
from celeriac.security.encryption import Cipher
from celeriac.security.keys import load_private_key, load_public_key
from celeriac.security.replay import DONE, MemorySeenNonces
from celeriac.security.screen import RefusalLog, Screen, check_worker_security
from celeriac.security.signing import Opened, Refused, Signer, Verifier, strip
from celeriac.testing import ThreadedWorker

SECRET = b"s" * 32
OTHER = b"o" * 32
FRAME = b'CQ\x01\x01\x00{"v":1,"args":["x"]}'


def _refusal(verifier: Verifier, body: bytes, queue: str = "q",
             now: float | None = None) -> Refused:
    with pytest.raises(Refused) as caught:
        verifier.open(body, queue, now)
    return caught.value


# -- signing ---------------------------------------------------------------------------


def test_hmac_signature_verifies_and_any_change_is_a_bad_signature() -> None:
    verifier = Verifier({"k1": SECRET}, {}, max_age=60)
    body = Signer("k1", secret=SECRET).sign(FRAME, "q")
    opened = verifier.open(body, "q")
    assert bytes(opened.frame) == FRAME
    assert len(opened.nonce) == 16
    assert bytes(strip(body)) == FRAME  # (display only: not checked)
    # Every byte of the header, the signature and the frame is covered
    for index in range(2, len(body)):
        changed = bytearray(body)
        changed[index] ^= 0x01
        assert _refusal(verifier, bytes(changed)).kind in ("bad_signature", "replay")
    # Another queue, another secret of the same id, an id not listed, no envelope
    assert "for another queue than 'other'" in str(_refusal(verifier, body, "other"))
    forged = Signer("k1", secret=OTHER).sign(FRAME, "q")
    assert _refusal(verifier, forged).kind == "bad_signature"
    unknown = _refusal(verifier, Signer("k9", secret=OTHER).sign(FRAME, "q"))
    assert str(unknown) == ("bad_signature: signed with the HMAC-SHA256 key 'k9', which "
                            "this worker does not list (it has 'k1')")
    assert _refusal(verifier, FRAME).kind == "unsigned"
    assert _refusal(verifier, b"").kind == "unsigned"
    assert _refusal(verifier, body[:30]).kind == "bad_signature"  # cut short


def test_age_counts_from_the_later_of_signing_and_eta() -> None:
    verifier = Verifier({"k1": SECRET}, {}, max_age=60)
    signer = Signer("k1", secret=SECRET)
    now = time.time()
    stale = signer.sign(FRAME, "q", now=now - 61)
    assert _refusal(verifier, stale, now=now).kind == "replay"
    # An eta an hour ahead: valid until an hour and a minute from now
    scheduled = signer.sign(FRAME, "q", due=now + 3600, now=now - 61)
    assert verifier.open(scheduled, "q", now=now + 3650).valid_until == now + 3660
    assert _refusal(verifier, scheduled, now=now + 3661).kind == "replay"


def test_rotation_verifies_old_and_new_keys_and_mixes_hmac_and_ed25519() -> None:
    private_pem, public_pem = generate_signing_key_pair()
    verifier = Verifier({"2026-11": OTHER, "2026-12": SECRET},
                        {"ed-2027-01": load_public_key("k", public_pem)}, max_age=60)
    for signer in (Signer("2026-11", secret=OTHER), Signer("2026-12", secret=SECRET),
                   Signer("ed-2027-01", private_key=load_private_key("k", private_pem))):
        assert bytes(verifier.open(signer.sign(FRAME, "q"), "q").frame) == FRAME
    # Dropping the old key ends it
    assert _refusal(Verifier({"2026-12": SECRET}, {}, 60),
                    Signer("2026-11", secret=OTHER).sign(FRAME, "q")).kind == "bad_signature"


def test_ed25519_verifier_needs_only_the_public_key_from_a_file(tmp_path: Path) -> None:
    private_pem, public_pem = generate_signing_key_pair()
    path = tmp_path / "producer.pub"
    path.write_text(public_pem)
    verifier = Verifier({}, {"p1": load_public_key("k", str(path))}, max_age=60)
    body = Signer("p1", private_key=load_private_key("k", private_pem)).sign(FRAME, "q")
    assert bytes(verifier.open(body, "q").frame) == FRAME
    other_private, _ = generate_signing_key_pair()
    forged = Signer("p1", private_key=load_private_key("k", other_private)).sign(FRAME, "q")
    assert _refusal(verifier, forged).kind == "bad_signature"
    assert _refusal(verifier, body, "other").kind == "bad_signature"


# -- encryption ------------------------------------------------------------------------


def test_encryption_round_trips_rotates_and_detects_changes() -> None:
    old, new = generate_encryption_key(), generate_encryption_key()
    keys = {"e1": base64.urlsafe_b64decode(old), "e2": base64.urlsafe_b64decode(new)}
    sealed = Cipher(keys, "e1").encrypt(FRAME)
    assert b"args" not in sealed
    assert Cipher(keys, "e2").decrypt(sealed) == FRAME  # the old key still listed
    with pytest.raises(DecodeError, match="key id 'e1', which is not in"):
        Cipher({"e2": keys["e2"]}, "e2").decrypt(sealed)
    changed = bytearray(sealed)
    changed[-1] ^= 1
    with pytest.raises(DecodeError, match="does not authenticate"):
        Cipher(keys, "e1").decrypt(bytes(changed))
    swapped = sealed.replace(b"e1", b"e2", 1)  # the key id is authenticated too
    with pytest.raises(DecodeError, match="does not authenticate"):
        Cipher(keys, "e1").decrypt(swapped)


# -- settings --------------------------------------------------------------------------


def test_settings_refuse_weak_or_unknown_keys_with_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"is 5 bytes long; a signing secret"):
        App("t", broker="memory://", task_signing_keys={"k": "short"})
    with pytest.raises(ConfigurationError, match="a key id is 1-64 printable"):
        App("t", broker="memory://", task_signing_keys={"has space": "x" * 32})
    with pytest.raises(ConfigurationError, match="URL-safe base64"):
        App("t", broker="memory://", task_encryption_keys={"e": "not a key"})
    with pytest.raises(ConfigurationError, match="cannot read the key file"):
        App("t", broker="memory://", task_signing_public_keys={"p": str(tmp_path / "x")})
    private_pem, _ = generate_signing_key_pair()
    with pytest.raises(ConfigurationError, match="is not a PEM public key"):
        App("t", broker="memory://", task_signing_public_keys={"p": private_pem})
    app = App("t", broker="memory://", task_signing_keys={"k": "x" * 32},
              task_signing_key_id="nope")
    with pytest.raises(ConfigurationError, match="'nope' names no key"):
        _ = app.security
    app.conf.task_signing_key_id = "k"  # a change rebuilds it
    assert app.security is not None
    assert app.security.signer is not None
    with pytest.raises(ConfigurationError, match="needs task_signing_key_id"):
        _ = App("t", broker="memory://", task_signing_private_key=private_pem).security
    with pytest.raises(ConfigurationError, match="no key to encrypt with"):
        _ = App("t", broker="memory://", result_encryption=True).security
    with pytest.raises(ConfigurationError, match="'auth' is Celery's signing serializer"):
        App("t", broker="memory://", task_serializer="auth")
    with pytest.raises(ConfigurationError, match="task_signing_private_key"):
        App("t", broker="memory://", security_key="/etc/ssl/private/worker.key")
    assert App("t", broker="memory://").security is None


def test_keys_are_never_shown() -> None:
    private_pem, _ = generate_signing_key_pair()
    app = App("t", broker="memory://", task_signing_keys={"k": "x" * 40},
              task_signing_private_key=private_pem, task_signing_key_id="p",
              task_encryption_keys={"e": generate_encryption_key()})
    shown = app.conf.humanize() + repr(masked_settings(app.conf))
    assert "x" * 40 not in shown
    assert "PRIVATE KEY" not in shown
    assert "'e': " not in shown


# -- the worker side -------------------------------------------------------------------


def _delivery(body: bytes, count: int = 1, id_: str = "m1") -> Delivery:
    return Delivery(id_, "q", body, 0, count, receipt=None)


def test_screen_refuses_replays_but_takes_over_redeliveries() -> None:
    async def scenario() -> None:
        seen = MemorySeenNonces()
        verifier = Verifier({"k": SECRET}, {}, 60)
        screen, other = Screen(verifier, seen), Screen(verifier, seen)  # two processes
        screen.log, other.log = RefusalLog(burst=0), RefusalLog(burst=0)
        tally = screen.tally = other.tally = TaskTally()
        body = Signer("k", secret=SECRET).sign(FRAME, "q")
        passed, refused = await screen.check([_delivery(body), _delivery(FRAME, id_="u")])
        assert [d.id for d, _ in passed] == ["m1"]
        assert [r.kind for _, r in refused] == ["unsigned"]
        opened = passed[0][1]
        assert opened is not None
        # A copy fetched by another process while it runs: a replay
        _, refused = await other.check([_delivery(body, id_="copy")])
        assert "already being run" in str(refused[0][1])
        # Its redelivery (its worker died): taken over
        passed, _ = await other.check([_delivery(body, count=2)])
        assert len(passed) == 1
        # Once run, even a "redelivery" is a replay
        await screen.mark_run([opened])
        _, refused = await other.check([_delivery(body, count=3)])
        assert "already run" in str(refused[0][1])
        # Handed back unstarted: new again when it comes back
        fresh = Signer("k", secret=SECRET).sign(FRAME, "q")
        passed, _ = await screen.check([_delivery(fresh)])
        fresh_opened = passed[0][1]
        assert fresh_opened is not None
        await screen.release([fresh_opened])
        passed, _ = await other.check([_delivery(fresh)])
        assert len(passed) == 1
        assert dict(tally.refused) == {"unsigned": 1, "replay": 2}
        assert seen._seen[opened.nonce.hex()][0] == DONE

    asyncio.run(scenario())


def test_refusals_are_logged_at_most_a_burst_per_window(
        caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(burst=2, window=3600)
    for index in range(5):
        log.refused(f"m{index}", "q", Refused("unsigned", "no signature"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert all("refused, not run: unsigned: no signature" in line for line in lines)
    log._started -= 3600  # the window ends: the suppressed ones are summed up
    log.refused("m9", "q", Refused("replay", "seen"))
    assert "3 more refused message(s)" in caplog.records[2].getMessage()


def test_refused_counts_reach_metrics_through_the_tally_file() -> None:
    tally = TaskTally()
    tally.refuse("bad_signature")
    tally.refuse("bad_signature")
    read, _ = TaskTally.from_json(tally.to_json(final=False))
    text = render(Collector(lambda: task_families(read))).decode()
    assert 'celeriac_messages_refused_total{reason="bad_signature"} 2.0' in text
    assert 'celeriac_messages_refused_total{reason="replay"} 0.0' in text


@pytest.fixture
def signed_app() -> Iterator[App]:
    app = App("t", broker="memory://", task_signing_keys={"k": "x" * 32},
              task_signing_key_id="k", task_encryption_keys={"e": generate_encryption_key()},
              task_encryption_key_id="e", result_encryption=True,
              task_message_max_size=4096)
    yield app
    app.close()


def test_a_signed_worker_runs_signed_encrypted_tasks_and_retries_and_refuses_the_rest(
        signed_app: App) -> None:
    attempts: list[int] = []

    @signed_app.task(encrypt=True, bind=True, max_retries=2, default_retry_delay=0.01)
    def personal(self: object, name: str) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise self.retry()  # type: ignore[attr-defined]
        return name.upper()

    bounces: list[int] = []

    @signed_app.task
    def bouncy() -> str:
        bounces.append(1)
        if len(bounces) == 1:
            raise Reject("not yet", requeue=True)  # its claim is released, not a replay
        return "landed"

    rejected: list[tuple[str, str]] = []

    def heard(sender: object, message: Delivery, exc: str, **_: object) -> None:
        rejected.append((message.id, exc.split(":")[0]))

    signals.task_rejected.connect(heard)
    _, outgoing = signed_app.prepare(personal.name, ["ada"], {}, {}, personal)
    assert b"ada" not in outgoing.body  # encrypt=True: the frame is sealed
    assert signed_app.decode_message(outgoing.body).args == ("ada",)  # (with the key)
    stream = signed_app.events.iter(timeout=10)  # subscribed before anything is sent
    with ThreadedWorker(signed_app):
        result = personal.delay("ada")
        assert result.get(timeout=10) == "ADA"  # its retry was signed anew
        assert bouncy.delay().get(timeout=10) == "landed"
        stored = asyncio.run(signed_app.backend.load_many([result.id]))[result.id]
        assert stored[:2] == b"CE"  # result_encryption
        assert b"ADA" not in stored
        forged = Outgoing("forged", "celeriac", b'CQ\x01\x01\x00{}')
        huge = Outgoing("huge", "celeriac", b"CS" + b"x" * 10_000)  # not even hashed
        asyncio.run(signed_app.broker.publish([forged, huge]))
        deadline = time.monotonic() + 10
        while len(asyncio.run(_dead(signed_app))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        letters = asyncio.run(_dead(signed_app))
    signals.task_rejected.disconnect(heard)
    assert sorted((d.id, d.reason.split(":")[0]) for d in letters) == [
        ("forged", "unsigned"), ("huge", "message too large")]
    assert sorted(rejected) == [("forged", "unsigned"), ("huge", "message too large")]
    events = {}
    for event in stream:
        if event["type"] == "task-rejected" and event["uuid"] in ("forged", "huge"):
            events[event["uuid"]] = (event["reason"].split(":")[0], event["dead_lettered"])
            if len(events) == 2:
                break
    assert events == {"forged": ("unsigned", True), "huge": ("message too large", True)}
    assert len(attempts) == 2


async def _dead(app: App) -> list[DeadLetter]:
    return await app.broker.dead_letters(10)


def test_a_signing_worker_needs_a_server_for_its_nonces() -> None:
    app = App("t", broker="amqp://guest:guest@127.0.0.1:5672/none", backend="rpc://",
              task_signing_keys={"k": "x" * 32}, task_signing_key_id="k")
    with pytest.raises(ConfigurationError,
                       match="replay protection.*set result_backend to a redis://"):
        check_worker_security(app)
    app.conf.task_signing_keys = {}  # (no verification keys: nothing to remember)
    app.conf.task_signing_key_id = None
    check_worker_security(app)


def test_nonces_that_cannot_be_claimed_send_the_batch_back_until_they_can(
        signed_app: App, caplog: pytest.LogCaptureFixture) -> None:
    class Down(MemorySeenNonces):
        failures = 2

        async def claim(self, signed: Sequence[Opened], token: str) -> list[str | None]:
            if self.failures:
                self.failures -= 1
                raise BrokerError("the server is down")
            return await super().claim(signed, token)

    @signed_app.task
    def ping() -> str:
        return "pong"

    with ThreadedWorker(signed_app) as worker:
        assert worker.consumer is not None
        assert worker.consumer.screen is not None
        worker.consumer.screen.seen = Down()
        assert ping.delay().get(timeout=10) == "pong"
    lines = [r.getMessage() for r in caplog.records if "could not claim" in r.getMessage()]
    assert lines[0] == ("could not claim the nonces of 1 signed message(s) (attempt 1): "
                        "the server is down; handing them back in 0.2s")

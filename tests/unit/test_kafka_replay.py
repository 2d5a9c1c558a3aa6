"""The Kafka broker's replay of a queue's log (``brokers/kafka_log``), without a server:
claims race in log order, and a send the producer appended twice is one message."""

from __future__ import annotations

from celeriac.brokers.kafka_log import PartitionState, state_record


def message(state: PartitionState, offset: int, id_: str, nonce: bytes) -> None:
    state.apply(offset, [("k", b"m"), ("id", id_.encode()), ("q", b"q"), ("n", nonce)],
                b"body", 0.0)


def claim(state: PartitionState, offset: int, offsets: list[int], at: float) -> list[bool]:
    value, headers = state_record("c", {"at": at, "until": at + 10, "o": offsets})
    state.apply(offset, headers, value, at)
    return state.outcomes[offset].valid


def test_the_first_claim_in_the_log_wins_and_counts_one_delivery() -> None:
    state = PartitionState(next_offset=0)
    message(state, 0, "a", b"n1")
    assert claim(state, 1, [0], at=100.0) == [True]
    assert claim(state, 2, [0], at=100.1) == [False]  # another process's, later in the log
    assert claim(state, 3, [0], at=111.0) == [True]  # the first lease ran out
    assert state.messages[0].count == 2


def test_a_send_appended_twice_is_one_message() -> None:
    state = PartitionState(next_offset=0)
    message(state, 0, "a", b"n1")
    message(state, 1, "a", b"n1")  # the producer's retry of the same send
    message(state, 2, "a", b"n2")  # a new send of the same id (a task's retry) is kept
    assert sorted(state.messages) == [0, 2]
    assert [m.offset for m in state.pick(10, now=1.0)] == [0, 2]

"""Remote control on the wire: a request is one record on the ``control`` topic, each
answer one record on ``replies`` (``celeriac.bus``).

A request carries an id, a command name, its keyword arguments, the node names it is
for (``destination``; ``None``: every node) and whether answers are wanted. Every
listener reads ``control`` from the moment it started (a worker that starts later never
runs an older command), and answers with records on ``replies`` naming the request, its
node and its process index (``None`` when the node's own service answered: node-level
commands such as ``pool_grow``). The client subscribes to ``replies`` *before* it
publishes the request, so no answer can slip past it, then collects answers for
``timeout`` seconds (Celery's default: 1 s) or until ``limit`` of them arrived.

A node's own service also says which of its processes will answer (``expect``: their
indices), so a request for named nodes (``destination``) ends as soon as each of them
has answered in full, instead of waiting out the timeout (Celery stops there too, at one
reply per destination). A process that does not answer (stuck, still starting) makes the
client wait the timeout, no more.

Records are JSON: a command's answer must be data any client can read (task arguments
are shown as their ``repr``, as Celery does).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celeriac.bus.base import CONTROL, REPLIES, Bus

DEFAULT_TIMEOUT = 1.0  # seconds a client collects answers (Celery's default)


@dataclass(frozen=True, slots=True)
class Request:
    command: str
    arguments: dict[str, Any] = field(default_factory=dict)
    destination: tuple[str, ...] | None = None  # node names; None: every node
    reply: bool = True
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    sent_at: float = field(default_factory=time.time)

    def addressed_to(self, node: str) -> bool:
        return self.destination is None or node in self.destination

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "command": self.command,
                           "arguments": self.arguments,
                           "destination": (list(self.destination)
                                           if self.destination is not None else None),
                           "reply": self.reply, "sent_at": self.sent_at},
                          default=repr).encode()

    @classmethod
    def decode(cls, data: bytes) -> Request:
        """The request in ``data``; ``ValueError`` if it is not one."""
        try:
            fields = json.loads(data)
            destination = fields["destination"]
            request = cls(command=str(fields["command"]), arguments=dict(fields["arguments"]),
                          destination=(tuple(str(name) for name in destination)
                                       if destination is not None else None),
                          reply=bool(fields["reply"]), id=str(fields["id"]),
                          sent_at=float(fields["sent_at"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a control request: {exc}") from None
        return request


@dataclass(frozen=True, slots=True)
class Reply:
    request: str  # the request's id
    node: str
    process: int | None  # the answering process's index; None: the node's own service
    value: Any  # the command's answer; {"error": message} when it failed; None: only expect
    expect: tuple[int, ...] | None = None  # (node service) the processes that will answer

    @property
    def failed(self) -> bool:
        return isinstance(self.value, dict) and "error" in self.value

    def encode(self) -> bytes:
        return json.dumps({"request": self.request, "node": self.node,
                           "process": self.process, "value": self.value,
                           "expect": list(self.expect) if self.expect is not None else None},
                          default=repr).encode()

    @classmethod
    def decode(cls, data: bytes) -> Reply:
        """The reply in ``data``; ``ValueError`` if it is not one."""
        try:
            fields = json.loads(data)
            process, expect = fields["process"], fields.get("expect")
            return cls(request=str(fields["request"]), node=str(fields["node"]),
                       process=int(process) if process is not None else None,
                       value=fields["value"],
                       expect=tuple(int(i) for i in expect) if expect is not None else None)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a control reply: {exc}") from None


def error(message: str) -> dict[str, str]:
    """A failed command's answer, in Celery's shape."""
    return {"error": message}


async def call(bus: Bus, request: Request, timeout: float = DEFAULT_TIMEOUT,
               limit: int | None = None) -> list[Reply]:
    """Publish ``request`` and collect its replies for ``timeout`` seconds, or until
    ``limit`` replies came, or until every node of its ``destination`` answered in full;
    ``[]`` at once when it asks for none."""
    if not request.reply:
        await bus.publish(CONTROL, [request.encode()])
        return []
    subscription = await bus.subscribe(REPLIES)  # before publishing: no reply is missed
    replies: list[Reply] = []
    try:
        await bus.publish(CONTROL, [request.encode()])
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            for record in await subscription.read(remaining):
                try:
                    reply = Reply.decode(record.payload)
                except ValueError:
                    continue  # not ours to judge: another client's garbage
                if reply.request == request.id:
                    replies.append(reply)
                    if limit is not None and len(replies) >= limit:
                        return replies
            if request.destination is not None and complete(replies, request.destination):
                return replies
    finally:
        await subscription.close()
    return replies


def complete(replies: Sequence[Reply], nodes: Sequence[str]) -> bool:
    """Whether each of ``nodes`` said which processes answer, and they all did."""
    for node in nodes:
        mine = [reply for reply in replies if reply.node == node]
        expected = next((reply.expect for reply in mine if reply.expect is not None), None)
        if expected is None:
            return False
        if not set(expected) <= {reply.process for reply in mine}:
            return False
    return True


async def answer(bus: Bus, replies: Sequence[Reply]) -> None:
    if replies:
        await bus.publish(REPLIES, [reply.encode() for reply in replies])

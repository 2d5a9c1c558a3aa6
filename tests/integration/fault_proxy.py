"""A TCP proxy on loopback that injects network faults between a client and a server.

Tests point a broker or backend URL at ``proxy.port`` instead of the server's port, then
break the link the way real networks break:

- ``reset()``: every open connection is cut with a TCP RST (``SO_LINGER`` 0), as when a
  NAT table or a load balancer drops the flow; new connections work at once.
- ``half_open()``: bytes stop flowing in both directions but no socket is closed, so to
  both ends the other one looks alive and silent (a partition, a dead host behind a
  firewall). New connections are accepted and black-holed too. ``restore()`` cuts the
  frozen connections and lets new ones through again.
- ``refuse()``: new connections are reset as soon as they are accepted (a closed port
  behind a proxy), until ``restore()``.

Written by hand because no library does this in-process and portably: toxiproxy needs
its own server binary, and iptables needs privileges a test must not assume.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
import threading


class Mode(enum.Enum):
    PASS = "pass"
    HALF_OPEN = "half-open"
    REFUSE = "refuse"


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``host:target_port`` until told to misbehave."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._mode = Mode.PASS
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0  # connections accepted so far: a test can await a reconnect
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    # -- faults ---------------------------------------------------------------------------

    def reset(self) -> int:
        """Cut every open connection with a RST; return how many sockets were cut."""
        with self._lock:
            cut, self._sockets = self._sockets, []
        for sock in cut:
            _abort(sock)
        return len(cut)

    def half_open(self) -> None:
        """Stop passing bytes without closing anything (see the module docstring)."""
        self._mode = Mode.HALF_OPEN
        self._flowing.clear()

    def refuse(self) -> None:
        """Reset new connections on accept; open ones are cut too."""
        self._mode = Mode.REFUSE
        self.reset()

    def restore(self) -> None:
        """Back to passing bytes; connections frozen by ``half_open`` are cut."""
        if self._mode is Mode.HALF_OPEN:
            self.reset()
        self._mode = Mode.PASS
        self._flowing.set()

    # ``freeze``/``thaw``: the names the RabbitMQ tests first used for the same fault.
    freeze = half_open
    thaw = restore

    def open_connections(self) -> int:
        with self._lock:
            return len(self._sockets) // 2

    def close(self) -> None:
        self.restore()
        self.reset()
        self._server.close()

    # -- plumbing -------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            if self._mode is Mode.REFUSE:
                _abort(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _abort(client)  # the server is down: so is the proxy, as a client sees it
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True,
                                 name="fault-proxy-pump").start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    while not self._flowing.wait(0.1):
                        if source.fileno() < 0:
                            return  # cut while frozen: drop what was read
                    target.sendall(data)
        finally:
            for sock in (source, target):  # one side ended: so does the other
                with contextlib.suppress(OSError):
                    sock.close()


def _abort(sock: socket.socket) -> None:
    """Close with a RST instead of a FIN, so the peer sees ECONNRESET, now.

    A pump thread is usually blocked in ``recv`` on the socket, and on Linux closing a
    socket does not end a ``recv`` in progress: the kernel keeps it open (and sends
    nothing) until that returns, which for an idle peer is its next heartbeat, seconds
    later. ``shutdown(SHUT_RD)`` ends the ``recv`` at once without sending anything, so
    the close that follows really is the RST.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()

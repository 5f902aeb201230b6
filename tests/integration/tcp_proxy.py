"""A loopback TCP proxy that can misbehave on cue, for fault tests.

It forwards ``127.0.0.1:<port>`` to a real server, so a test can make that
server look restarted, stopped or hung without touching the server itself
(it is shared by everything else on the machine). Bounded: it serves only
loopback, and shuts itself down after ``lifetime`` seconds if nobody does.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from types import TracebackType
from typing import Final, Literal, cast

Mode = Literal["forward", "refuse", "blackhole"]
CHUNK: Final = 65536


class TcpProxy:
    """``forward``: pass bytes both ways. ``refuse``: stop listening, so
    connects are refused. ``blackhole``: accept connections and never answer.
    ``drop_all()`` closes every open connection, as a server restart does;
    ``freeze()`` keeps them open but stops passing bytes, as a hung server does."""

    def __init__(self, target: tuple[str, int], *, lifetime: float = 120.0) -> None:
        self._target = target
        self._deadline = time.monotonic() + lifetime
        self._mode: Mode = "forward"
        self._frozen = False
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = self._listen(0)
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self._thread.start()

    # --- what tests call ---------------------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode
            self._frozen = False
            if mode == "refuse" and self._listener is not None:
                self._listener.close()
                self._listener = None
            elif mode != "refuse" and self._listener is None:
                self._listen(self.port)

    def drop_all(self) -> None:
        with self._lock:
            doomed, self._open = self._open, []
        for sock in doomed:
            _close(sock)

    def freeze(self) -> None:
        with self._lock:
            self._frozen = True

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self.drop_all()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- inside ------------------------------------------------------------------------------

    def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        return int(listener.getsockname()[1])

    def _running(self) -> bool:
        return not self._stopped.is_set() and time.monotonic() < self._deadline

    def _serve(self) -> None:
        pairs: dict[socket.socket, socket.socket] = {}
        while self._running():
            with self._lock:
                listener, frozen = self._listener, self._frozen
                live = set(self._open)
            for sock in [s for s in pairs if s not in live]:  # dropped by drop_all()
                pairs.pop(sock, None)
            readable = [s for s in pairs if not frozen]
            if listener is not None:
                readable.append(listener)
            if not readable:
                time.sleep(0.01)
                continue
            with selectors.DefaultSelector() as selector:
                for sock in readable:
                    try:
                        selector.register(sock, selectors.EVENT_READ)
                    except (ValueError, OSError):  # closed meanwhile
                        pairs.pop(sock, None)
                events = selector.select(timeout=0.05)
            for key, _ in events:
                sock = cast(socket.socket, key.fileobj)
                if sock is listener:
                    self._accept(listener, pairs)
                elif sock in pairs and not self._frozen:
                    self._pump(sock, pairs)
        self.drop_all()

    def _accept(self, listener: socket.socket, pairs: dict[socket.socket, socket.socket]) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        client.setblocking(True)
        with self._lock:
            mode = self._mode  # now, not when the select began: set_mode() may have come since
        if mode == "blackhole":
            with self._lock:
                self._open.append(client)  # held open, never read, never answered
            return
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            _close(client)
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(5)
        pairs[client], pairs[upstream] = upstream, client
        with self._lock:
            self._open += [client, upstream]

    def _pump(self, sock: socket.socket, pairs: dict[socket.socket, socket.socket]) -> None:
        other = pairs[sock]
        try:
            data = sock.recv(CHUNK)
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        for end in (sock, other):  # one side went away: so does the other
            pairs.pop(end, None)
            _close(end)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()

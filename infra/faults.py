"""Faults on demand, for the tests and `make chaos`: a TCP proxy on 127.0.0.1 in front of
the S3 endpoint that refuses every connection while it is down (the store's data, held by
the server behind it, survives the outage)."""

from __future__ import annotations

import socket
import socketserver
import threading


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        proxy: StoreProxy = self.server.proxy  # type: ignore[attr-defined]
        if proxy.is_down.is_set():
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return  # closed at once with a reset: the client sees a refused/broken connection
        with socket.create_connection(proxy.upstream, timeout=30) as upstream:
            proxy.active.add(self.request)
            try:
                pump = threading.Thread(target=_copy, args=(upstream, self.request), daemon=True)
                pump.start()
                _copy(self.request, upstream)
                pump.join()
            finally:
                proxy.active.discard(self.request)


def _copy(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class StoreProxy:
    """`http://127.0.0.1:PORT` forwarding to `upstream` (host, port); `down()`/`up()` switch
    the outage, `outage(seconds)` schedules one."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.is_down = threading.Event()
        self.active: set[socket.socket] = set()  # open client connections (kept alive by clients)
        self._server = _Server(("127.0.0.1", 0), _Pipe)
        self._server.proxy = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.outages = 0
        threading.Thread(target=self._server.serve_forever, daemon=True, name="store-proxy").start()

    def down(self) -> None:
        """Refuse new connections and break the open ones (clients pool them)."""
        self.outages += 1
        self.is_down.set()
        for connection in list(self.active):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def up(self) -> None:
        self.is_down.clear()

    def outage(self, seconds: float) -> threading.Timer:
        """Down now, up again after `seconds`."""
        self.down()
        timer = threading.Timer(seconds, self.up)
        timer.daemon = True
        timer.start()
        return timer

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

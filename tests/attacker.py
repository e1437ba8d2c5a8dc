"""A second local HTTP server on 127.0.0.1 standing in for an attacker's site: it serves the
pages and files it is given and records every request that reaches it (so a test can say
the studio never fetched from it, nor sent it a file)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from flows.local_api import free_port


@dataclass
class Seen:
    method: str
    path: str
    body: bytes


@dataclass
class Attacker:
    pages: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # path -> (content type, body)
    seen: list[Seen] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Attacker:
        attacker = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                attacker.seen.append(Seen(self.command, self.path, self.rfile.read(length)))
                content_type, body = attacker.pages.get(self.path.split("?")[0], ("text/plain", b"stolen"))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = _answer

            def log_message(self, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

"""The auth service of the Chinese APISIX Python plugin guide's sample, for real:
``POST`` a JSON body ``{"token": ...}``; 200 for ``Bearer good``, else 403. It
records the method and body of every request it got."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

seen: list[tuple[str, Any]] = []


class _Auth(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        seen.append(("POST", body))
        self.send_response(200 if body.get("token") == "Bearer good" else 403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        seen.append(("GET", None))
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def guide_auth_service() -> Iterator[str]:
    """Serve it on a free loopback port; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Auth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/verify"
    finally:
        server.shutdown()
        server.server_close()

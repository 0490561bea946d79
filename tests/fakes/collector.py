"""A loopback OTLP/HTTP collector for tests: stores each POST, answers as it is told."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Collector:
    """Keeps (path, lower-cased headers, body) per POST; answers with `statuses` in turn,
    then 200 (an empty ExportServiceResponse)."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.got = threading.Event()
        pending = list(statuses)
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                collector.posts.append((self.path, headers, body))
                collector.got.set()
                self.send_response(pending.pop(0) if pending else 200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""A real HTTP server for the tests of callback URLs: it records what it receives and answers
from a script."""

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self):
        return json.loads(self.body)


ECHO = "echo"  # answer 200 with the request's echostr
SLOW = "slow"  # answer only when the test ends: the client times out first


class CallbackServer:
    """HTTP on 127.0.0.1 in a thread. `reply_with(*replies)` sets the answers, one per request
    in order, the last one repeating: (status, body), ECHO or SLOW. Default: 200 "ok"."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._script: list = [(200, b"ok")]
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "CallbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str = "/ums/callback") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def reply_with(self, *replies) -> None:
        with self._lock:
            self._script = list(replies)

    def _answer(self, request: Received) -> tuple[int, bytes]:
        with self._lock:
            self.requests.append(request)
            reply = self._script.pop(0) if len(self._script) > 1 else self._script[0]
        if reply == ECHO:
            return 200, request.query.get("echostr", [""])[0].encode()
        if reply == SLOW:
            self._release.wait(timeout=30)
            return 200, b"too late"
        return reply


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        parts = urlsplit(self.path)
        request = Received(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
        )
        status, body = self.server.owner._answer(request)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (a timeout test)

    def log_message(self, *args) -> None:
        pass

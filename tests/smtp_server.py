"""Real SMTP servers for the tests: aiosmtpd with AUTH, STARTTLS or implicit TLS, on loopback.

Each server records what reached it (AUTH attempts, messages), so a test can assert that no
credentials were sent before TLS was established, or exactly what was delivered.
"""

import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

USERNAME = "mailer@example.com"
PASSWORD = "s3cret-authorization-code"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class Recorder:
    auth_attempts: list[tuple[str, str]] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    connections: int = 0


class Handler:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.recorder.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or b"")
        )
        return "250 2.0.0 Ok: queued as TEST1"


class RecordingController(Controller):
    def __init__(self, recorder: Recorder, **kwargs: Any) -> None:
        self.recorder = recorder
        super().__init__(Handler(recorder), **kwargs)

    def factory(self) -> SMTP:
        self.recorder.connections += 1
        return super().factory()


class SmtpTestServer:
    """mode: "plain" (no TLS), "starttls" or "ssl" (implicit TLS)."""

    def __init__(
        self,
        *,
        mode: str = "plain",
        cert: Any = None,
        require_auth: bool = True,
        offer_starttls: bool = True,
    ) -> None:
        self.mode = mode
        self.host = "127.0.0.1"
        self.port = free_port()
        self.recorder = Recorder()
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "decode_data": False,
            "authenticator": self._authenticate,
            "auth_required": require_auth,
            "auth_require_tls": mode == "starttls",
            "server_hostname": "localhost",
            "ready_timeout": 5,
        }
        context = self._server_context(cert) if cert else None
        if mode == "starttls" and offer_starttls:
            kwargs["tls_context"] = context
            kwargs["require_starttls"] = True
        elif mode == "ssl":
            kwargs["ssl_context"] = context
        self.controller = RecordingController(self.recorder, **kwargs)

    @staticmethod
    def _server_context(cert: Any) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        return context

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        username, password = auth_data.login.decode(), auth_data.password.decode()
        self.recorder.auth_attempts.append((username, password))
        # handled=False: aiosmtpd then answers the failure with its standard 535 reply.
        return AuthResult(success=username == USERNAME and password == PASSWORD, handled=False)

    def __enter__(self) -> "SmtpTestServer":
        self.controller.start()
        self.recorder.connections = 0  # the controller's own start-up probe is not a client
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class SilentServer:
    """Accepts TCP connections and never says a word (a hung SMTP server)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self.sock.getsockname()
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)
            self._greet(conn)

    def _greet(self, conn: socket.socket) -> None:
        """Say nothing: a hung server."""

    def __enter__(self) -> "SilentServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class RefusingServer(SilentServer):
    """Greets every connection with a refusal (e.g. 554) and closes it."""

    def __init__(self, greeting: bytes = b"554 5.7.1 No SMTP service here\r\n") -> None:
        super().__init__()
        self.greeting = greeting

    def _greet(self, conn: socket.socket) -> None:
        conn.sendall(self.greeting)
        conn.close()

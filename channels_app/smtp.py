"""The one SMTP factory: a sender's Django `EmailBackend`, built with every parameter explicit.

Django's backend falls back to the global `EMAIL_*` settings for any argument left as None, so
nothing here is ever None. The backend fails closed: the TLS mode is enforced, certificates are
verified (or pinned, for a trusted self-signed one) and all of that happens before AUTH.
"""

import hashlib
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from django.core.mail.backends.smtp import EmailBackend
from django.core.mail.utils import DNS_NAME
from django.utils.functional import cached_property
from django.utils.translation import gettext as _

from channels_app import netguard


class Encryption(StrEnum):
    NONE = "none"
    SSL = "ssl"
    STARTTLS = "starttls"


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    encryption: Encryption
    timeout: float
    ca_bundle: str = ""
    trust_self_signed: bool = False
    pinned_fingerprint: str = ""


@dataclass
class SessionInfo:
    """What the server said while the connection was set up, for the console."""

    banner: str = ""
    tls_version: str = ""
    cipher: str = ""
    fingerprint: str = ""
    auth_reply: str = ""
    extensions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SmtpReply:
    code: int
    text: str


AUTH_PREFERENCE = ("PLAIN", "LOGIN", "CRAM-MD5")


class StartTLSUnavailable(smtplib.SMTPNotSupportedError):
    """The sender requires STARTTLS and the server does not offer it."""


class CertificateMismatch(ssl.SSLError):
    """A trusted self-signed certificate differs from the one pinned for the sender."""


def fingerprint_of(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def build_ssl_context(config: SmtpConfig) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if config.ca_bundle:  # in addition to the system's CAs, for relays with a private CA
        context.load_verify_locations(cafile=config.ca_bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.trust_self_signed:
        # Chain and name are not checked; the certificate's fingerprint is pinned instead.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class GuardedSMTP(smtplib.SMTP):
    """smtplib.SMTP that connects only to addresses the network guard allows."""

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: Any = None
    ) -> tuple[int, bytes]:
        # smtplib takes the TLS server name from _host, which only its constructor sets.
        self._host = host
        return super().connect(host, port, source_address)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return netguard.connect(host, port, timeout, self.source_address)


class GuardedSMTP_SSL(smtplib.SMTP_SSL, GuardedSMTP):  # noqa: N801 (mirrors smtplib's name)
    """Implicit TLS over a guarded socket (SMTP_SSL wraps what GuardedSMTP connects)."""


class SenderEmailBackend(EmailBackend):
    """Django's SMTP backend for one sender, with explicit settings and a fail-closed open()."""

    def __init__(self, config: SmtpConfig) -> None:
        if not config.host or not config.port or not config.timeout:
            raise ValueError("An SMTP backend needs an explicit host, port and timeout.")
        super().__init__(
            host=config.host,
            port=config.port,
            username=config.username,
            password=config.password,
            use_tls=config.encryption == Encryption.STARTTLS,
            use_ssl=config.encryption == Encryption.SSL,
            timeout=config.timeout,
            ssl_keyfile="",
            ssl_certfile="",
            fail_silently=False,
        )
        self.config = config
        self.session = SessionInfo()

    @property
    def connection_class(self) -> type[smtplib.SMTP]:
        return GuardedSMTP_SSL if self.use_ssl else GuardedSMTP

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        return build_ssl_context(self.config)

    def open(self) -> bool:
        if self.connection:
            return False
        self.close()
        self.session = SessionInfo()
        params: dict = {"local_hostname": DNS_NAME.get_fqdn(), "timeout": self.timeout}
        if self.use_ssl:
            params["context"] = self.ssl_context
        connection = self.connection_class(**params)
        self._partial_connection = connection
        code, banner = connection.connect(self.host, self.port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, banner)
        self.session.banner = f"{code} {banner.decode(errors='replace')}"
        connection.ehlo_or_helo_if_needed()
        if self.use_tls:
            self._starttls(connection)
        if self.use_ssl or self.use_tls:
            self._check_certificate(connection)
        self.session.extensions = sorted(connection.esmtp_features)
        if self.username:
            code, reply = self._login(connection)
            self.session.auth_reply = f"{code} {reply.decode(errors='replace')}"
        self.connection, self._partial_connection = connection, None
        return True

    def _login(self, connection: smtplib.SMTP) -> tuple[int, bytes]:
        """One AUTH attempt with the best offered mechanism.

        smtplib's login() tries every mechanism in turn, so one wrong password costs several
        failed logins — the quickest way to get a mailbox locked by its provider.
        """
        if not connection.has_extn("auth"):
            raise smtplib.SMTPNotSupportedError(_("The server offers no AUTH (login)."))
        offered = connection.esmtp_features["auth"].upper().split()
        mechanism = next((m for m in AUTH_PREFERENCE if m in offered), None)
        if mechanism is None:
            raise smtplib.SMTPNotSupportedError(
                _("No supported login method (server offers: %(offered)s).")
                % {"offered": " ".join(offered)}
            )
        connection.user, connection.password = self.username, self.password
        method = getattr(connection, "auth_" + mechanism.lower().replace("-", "_"))
        return connection.auth(mechanism, method)

    def _starttls(self, connection: smtplib.SMTP) -> None:
        if not connection.has_extn("starttls"):
            raise StartTLSUnavailable(_("The server does not offer STARTTLS."))
        connection.starttls(context=self.ssl_context)
        connection.ehlo()  # the server's features may differ once the session is encrypted

    def _check_certificate(self, connection: smtplib.SMTP) -> None:
        tls_socket = connection.sock
        self.session.tls_version = tls_socket.version() or ""
        self.session.cipher = (tls_socket.cipher() or ("",))[0]
        self.session.fingerprint = fingerprint_of(tls_socket.getpeercert(binary_form=True) or b"")
        pinned = self.config.pinned_fingerprint
        if self.config.trust_self_signed and pinned and pinned != self.session.fingerprint:
            raise CertificateMismatch(
                _("The server's certificate (%(seen)s) is not the pinned one (%(pinned)s).")
                % {"seen": self.session.fingerprint, "pinned": pinned}
            )

    def send_raw(self, *, envelope_from: str, recipient: str, message: bytes) -> SmtpReply:
        """Send one message to one recipient and return the server's reply to the data.

        One RCPT per message, so a refused recipient is never hidden behind an accepted one.
        """
        with self._lock:
            self.open()
            connection = self.connection
            code, text = connection.mail(envelope_from)
            if code != 250:
                connection.rset()
                raise smtplib.SMTPSenderRefused(code, text, envelope_from)
            code, text = connection.rcpt(recipient)
            if code not in (250, 251):
                connection.rset()
                raise smtplib.SMTPRecipientsRefused({recipient: (code, text)})
            code, text = connection.data(message)
            if code != 250:
                connection.rset()
                raise smtplib.SMTPDataError(code, text)
            return SmtpReply(code, text.decode(errors="replace"))


class FailureKind(StrEnum):
    AUTH = "auth"
    CERTIFICATE = "certificate"
    TLS = "tls"
    NETWORK_GUARD = "network_guard"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


# Failures that are the sender's configuration, not the message: retrying them only hammers the
# relay (and can get the account locked), so they stop a batch and mark the sender unhealthy.
SENDER_FAILURES = frozenset(
    {FailureKind.AUTH, FailureKind.CERTIFICATE, FailureKind.TLS, FailureKind.NETWORK_GUARD}
)


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    code: int | None
    text: str

    @property
    def retryable(self) -> bool:
        return self.kind in (FailureKind.TIMEOUT, FailureKind.CONNECTION, FailureKind.TRANSIENT)

    @property
    def sender_problem(self) -> bool:
        return self.kind in SENDER_FAILURES


def _reply_text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def classify_failure(exc: BaseException) -> Failure:
    """Sort an exception raised while talking SMTP into what should happen next."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return Failure(FailureKind.AUTH, exc.smtp_code, _reply_text(exc.smtp_error))
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()), (None, b""))
        return _by_code(code, _reply_text(text))
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(exc.smtp_code, _reply_text(exc.smtp_error))
    if isinstance(exc, StartTLSUnavailable):
        return Failure(FailureKind.TLS, None, str(exc))
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        # login() raises this when the server offers no AUTH (often: AUTH only after TLS).
        return Failure(FailureKind.AUTH, None, str(exc))
    if isinstance(exc, ssl.SSLCertVerificationError | CertificateMismatch):
        return Failure(
            FailureKind.CERTIFICATE, None, getattr(exc, "verify_message", "") or str(exc)
        )
    if isinstance(exc, ssl.SSLError):
        return Failure(FailureKind.TLS, None, exc.reason or str(exc))
    if isinstance(exc, netguard.HostUnresolvable):
        # Often a passing DNS failure: retried, and not held against the sender.
        return Failure(FailureKind.CONNECTION, None, str(exc))
    if isinstance(exc, netguard.DestinationRefused):
        return Failure(FailureKind.NETWORK_GUARD, None, str(exc))
    if isinstance(exc, TimeoutError | socket.timeout):
        return Failure(FailureKind.TIMEOUT, None, _("The server did not answer in time."))
    if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(
        exc.__context__, TimeoutError
    ):
        # smtplib turns a read timeout into "Connection unexpectedly closed: timed out".
        return Failure(FailureKind.TIMEOUT, None, _("The server did not answer in time."))
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return Failure(
            FailureKind.CONNECTION, None, str(exc) or _("The server closed the connection.")
        )
    if isinstance(exc, OSError):
        return Failure(FailureKind.CONNECTION, None, exc.strerror or str(exc))
    return Failure(FailureKind.PERMANENT, None, str(exc))


def _by_code(code: int | None, text: str) -> Failure:
    if code == 535 or code == 534 or code == 530:
        return Failure(FailureKind.AUTH, code, text)
    if code is not None and 400 <= code < 500:
        return Failure(FailureKind.TRANSIENT, code, text)
    return Failure(FailureKind.PERMANENT, code, text)

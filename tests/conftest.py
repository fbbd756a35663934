import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trustme
from django.contrib.auth.models import Group

from channels_app import services
from channels_app.models import EmailSender
from tests.smtp_server import PASSWORD, USERNAME, SilentServer, SmtpTestServer

REQUIRE_SERVICES = os.environ.get("UMS_REQUIRE_SERVICES") == "1"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove this run's queue folder and limits file (named after the run's process)."""
    import shutil

    from django.conf import settings

    shutil.rmtree(settings.CELERY_BROKER_FOLDER, ignore_errors=True)
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{settings.UMS_RATE_LIMIT_FILE}{suffix}").unlink(missing_ok=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    if REQUIRE_SERVICES and not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        pytest.exit(
            "UMS_REQUIRE_SERVICES=1 needs DATABASE_URL to point at PostgreSQL.", returncode=3
        )


def service_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def skip_or_fail(reason: str) -> None:
    """Without the service: skip, except where the run says the services must be there (CI)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (UMS_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("UMS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    parts = urlsplit(url)
    if not service_reachable(parts.hostname or "127.0.0.1", parts.port or 6379):
        skip_or_fail(f"Redis is not reachable at {parts.hostname}:{parts.port or 6379}")
    return url


# --- certificates and SMTP servers ----------------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture(scope="session")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def trust_test_ca(settings, ca_bundle: str) -> str:
    settings.UMS_SMTP_CA_BUNDLE = ca_bundle
    return ca_bundle


@pytest.fixture
def plain_server() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(mode="plain", require_auth=False) as server:
        yield server


@pytest.fixture
def starttls_server(server_cert) -> Iterator[SmtpTestServer]:
    with SmtpTestServer(mode="starttls", cert=server_cert) as server:
        yield server


@pytest.fixture
def ssl_server(server_cert) -> Iterator[SmtpTestServer]:
    with SmtpTestServer(mode="ssl", cert=server_cert) as server:
        yield server


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    with SilentServer() as server:
        yield server


# --- model helpers --------------------------------------------------------------------------


@pytest.fixture
def make_sender(db):
    counter = iter(range(1, 10_000))

    def make(server=None, *, approve: bool = True, **overrides) -> EmailSender:
        n = next(counter)
        fields = {
            "name": f"Sender {n}",
            "code": f"SENDER{n}",
            "host": "localhost",
            "port": server.port if server else 465,
            "encryption": getattr(server, "mode", "ssl").replace("plain", "none"),
            "account": USERNAME,
            "password": PASSWORD,
            "from_address": "noreply@shop.example.com",
            "port_exception_reason": "the test server's port",
        }
        fields.update(overrides)
        sender = services.sender_create(**fields)
        if approve and not sender.port_allowed:
            services.sender_approve_port_exception(sender=sender, user=None)
        return sender

    return make


def role_group(role: str) -> Group:
    """The role's group, as the data migrations made it; a transactional test's flush empties
    the tables, so it is made again then."""
    group = Group.objects.filter(name=role).first()
    if group is None:
        from django.apps import apps as global_apps

        from ums.roles import sync_roles

        sync_roles(global_apps, None)
        group = Group.objects.get(name=role)
    return group


@pytest.fixture
def role_user(db, django_user_model):
    def make(role: str | None, username: str | None = None):
        user = django_user_model.objects.create_user(
            username=username or (role or "superuser").replace(" ", "").lower(),
            password="pw",
            email="staff@example.com",
            is_staff=True,
            is_superuser=role is None,
        )
        if role:
            user.groups.add(role_group(role))
        return user

    return make

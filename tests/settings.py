"""Test settings: the real settings module, fed a fixed test environment."""

import os

os.environ["UMS_ENV_FILE"] = ""  # a developer's .env must not change what the tests see
os.environ.setdefault(
    "DJANGO_SECRET_KEY", "tests-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
)
os.environ.setdefault("UMS_FIELD_KEYS", "pVqH0y0fM0a9cfXwpZ2mD8kq0dN1tEgwoyG7c3O6jG8=")
os.environ.setdefault("UMS_SMTP_ALLOW_PRIVATE_NETWORKS", "true")
os.environ.setdefault("UMS_SMTP_TIMEOUT", "3")
os.environ.setdefault("UMS_MAILCATCHER", "true")
# One queue folder and one limits file per test run (the worker processes it starts inherit
# them), so that two runs on one machine never take each other's tasks or share counts.
os.environ.setdefault(
    "CELERY_BROKER_FOLDER",
    os.path.join(os.path.dirname(__file__), "..", "var", f"test-broker-{os.getpid()}"),
)
os.environ.setdefault(
    "UMS_RATE_LIMIT_FILE",
    os.path.join(os.path.dirname(__file__), "..", "var", f"test-ratelimit-{os.getpid()}.sqlite3"),
)

from ums.settings import *  # noqa: F403
from ums.settings import DATABASES, VAR_DIR

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory, so that a real worker process sees the same test database.
    # One file per test run, so that two runs on one machine do not share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    # Likewise on PostgreSQL: a test database per run, dropped at its end.
    DATABASES["default"]["TEST"] = {"NAME": f"test_ums_{os.getpid()}"}

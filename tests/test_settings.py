"""Settings refuse bad values loudly; system checks refuse dangerous combinations."""

import os
from types import SimpleNamespace

import environ
import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured

from ums import checks
from ums.envparse import env_bool, env_fernet_keys, env_int, env_path, env_ports, env_positive


@pytest.mark.parametrize("value", ["25,abc", "0", "70000", ","])
def test_bad_port_lists_are_refused(monkeypatch, value):
    monkeypatch.setenv("UMS_SMTP_ALLOWED_PORTS", value)
    with pytest.raises(ImproperlyConfigured, match="UMS_SMTP_ALLOWED_PORTS"):
        env_ports(environ.Env(), "UMS_SMTP_ALLOWED_PORTS", default="25")


def test_port_list_is_parsed(monkeypatch):
    monkeypatch.setenv("UMS_SMTP_ALLOWED_PORTS", "25, 465,2525")
    assert env_ports(environ.Env(), "UMS_SMTP_ALLOWED_PORTS", default="25") == {25, 465, 2525}


def test_a_bad_fernet_key_is_named(monkeypatch):
    monkeypatch.setenv("UMS_FIELD_KEYS", "pVqH0y0fM0a9cfXwpZ2mD8kq0dN1tEgwoyG7c3O6jG8=,not-a-key")
    with pytest.raises(ImproperlyConfigured, match="key #2"):
        env_fernet_keys(environ.Env(), "UMS_FIELD_KEYS")


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_timeouts_must_be_positive_numbers(monkeypatch, value):
    monkeypatch.setenv("UMS_SMTP_TIMEOUT", value)
    with pytest.raises(ImproperlyConfigured, match="UMS_SMTP_TIMEOUT"):
        env_positive(environ.Env(), "UMS_SMTP_TIMEOUT", default=30.0)


def test_missing_ca_bundle_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("UMS_SMTP_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(ImproperlyConfigured, match="UMS_SMTP_CA_BUNDLE"):
        env_path(environ.Env(), "UMS_SMTP_CA_BUNDLE")


def check_ids() -> set[str]:
    return {message.id for message in run_checks(include_deployment_checks=True)}


def test_no_field_key_outside_debug_is_an_error(settings):
    settings.UMS_FIELD_KEYS = []
    settings.DEBUG = False
    assert "ums.E001" in check_ids()


def test_no_field_key_in_debug_is_a_warning(settings):
    settings.UMS_FIELD_KEYS = []
    settings.DEBUG = True
    ids = check_ids()
    assert "ums.W001" in ids and "ums.E001" not in ids


def test_task_time_limit_at_the_visibility_timeout_is_an_error(settings):
    settings.CELERY_TASK_TIME_LIMIT = 3600
    settings.CELERY_VISIBILITY_TIMEOUT = 3600
    assert "ums.E002" in check_ids()


def test_soft_limit_and_smtp_timeout_must_fit_inside_the_task_limit(settings):
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 400
    settings.CELERY_TASK_TIME_LIMIT = 360
    settings.UMS_SMTP_TIMEOUT = 500
    ids = check_ids()
    assert {"ums.E003", "ums.E004"} <= ids


def test_default_settings_pass_the_checks(settings):
    ids = check_ids()
    assert not {i for i in ids if i.startswith("ums.E")}


def test_private_networks_in_production_are_warned_about(settings):
    settings.DEBUG = False
    settings.UMS_SMTP_ALLOW_PRIVATE_NETWORKS = True
    assert "ums.W002" in check_ids()


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("On", True), ("0", False), ("no", False)]
)
def test_booleans_are_read(monkeypatch, raw, expected):
    monkeypatch.setenv("DJANGO_DEBUG", raw)
    assert env_bool(environ.Env(), "DJANGO_DEBUG", default=False) is expected


def test_a_misspelt_boolean_is_refused(monkeypatch):
    monkeypatch.setenv("DJANGO_DEBUG", "ture")
    with pytest.raises(ImproperlyConfigured, match="DJANGO_DEBUG"):
        env_bool(environ.Env(), "DJANGO_DEBUG", default=False)


@pytest.mark.parametrize("raw", ["soon", "-5", "70000"])
def test_whole_numbers_are_checked_and_named(monkeypatch, raw):
    monkeypatch.setenv("UMS_MAILCATCHER_PORT", raw)
    with pytest.raises(ImproperlyConfigured, match="UMS_MAILCATCHER_PORT"):
        env_int(environ.Env(), "UMS_MAILCATCHER_PORT", default=1025, minimum=1, maximum=65535)


def test_production_without_redis_or_postgresql_is_warned_about(monkeypatch):
    production = SimpleNamespace(
        DEBUG=False,
        CELERY_BROKER_URL="",
        CELERY_BROKER_FOLDER="/srv/ums/broker",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3"}},
        UMS_PUBLIC_URL="http://127.0.0.1:8000",
    )
    monkeypatch.setattr(checks, "settings", production)

    ids = {warning.id for warning in checks.check_production_services(None)}

    assert ids == {"ums.W003", "ums.W004", "ums.W005"}


def test_production_with_its_own_services_and_public_address_passes(monkeypatch):
    production = SimpleNamespace(
        DEBUG=False,
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        CELERY_BROKER_FOLDER="/srv/ums/broker",
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql"}},
        UMS_PUBLIC_URL="https://mail.example.com",
    )
    monkeypatch.setattr(checks, "settings", production)

    assert checks.check_production_services(None) == []


def test_old_secret_keys_from_the_environment_still_verify_signatures(tmp_path):
    """DJANGO_SECRET_KEY_FALLBACKS keeps unsubscribe links valid across a key change."""
    import subprocess
    import sys

    from django.core import signing

    old_key = "the-old-key-0123456789abcdefghijklmnopqrstuvwxyz"
    token = signing.dumps("ann@example.com", key=old_key, salt="check")
    code = (
        "import django; django.setup(); from django.core import signing; "
        f"print(signing.loads({token!r}, salt='check'))"
    )
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "ums.settings",
        "UMS_ENV_FILE": "",
        "DJANGO_SECRET_KEY": "the-new-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "DJANGO_SECRET_KEY_FALLBACKS": old_key,
        "UMS_FIELD_KEYS": "pVqH0y0fM0a9cfXwpZ2mD8kq0dN1tEgwoyG7c3O6jG8=",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ann@example.com", result.stderr

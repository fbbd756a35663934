"""System checks that refuse dangerous combinations of settings."""

import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Warning, register


@register("ums", deploy=False)
def check_field_keys(app_configs: Iterable[Any] | None, **kwargs: Any) -> list[Error | Warning]:
    if settings.UMS_FIELD_KEYS:
        return []
    if settings.DEBUG:
        return [
            Warning(
                "UMS_FIELD_KEYS is empty: secrets are encrypted with a key derived from "
                "DJANGO_SECRET_KEY, which is only acceptable for development.",
                hint="`make run` writes a generated key into .env; production sets its own.",
                id="ums.W001",
            )
        ]
    return [
        Error(
            "UMS_FIELD_KEYS must be set when DJANGO_DEBUG is off: SMTP passwords and "
            "MasterSecrets are encrypted at rest with it.",
            hint="Generate a key with Fernet.generate_key() and keep it out of the database.",
            id="ums.E001",
        )
    ]


@register("ums")
def check_task_limits(app_configs: Iterable[Any] | None, **kwargs: Any) -> list[Error]:
    errors = []
    if settings.CELERY_TASK_TIME_LIMIT >= settings.CELERY_VISIBILITY_TIMEOUT:
        errors.append(
            Error(
                "CELERY_TASK_TIME_LIMIT must be below CELERY_VISIBILITY_TIMEOUT: a task still "
                "running when the broker's visibility timeout expires is handed to a second "
                "worker and its emails are sent twice.",
                id="ums.E002",
            )
        )
    if settings.CELERY_TASK_SOFT_TIME_LIMIT >= settings.CELERY_TASK_TIME_LIMIT:
        errors.append(
            Error(
                "CELERY_TASK_SOFT_TIME_LIMIT must be below CELERY_TASK_TIME_LIMIT, so a task can "
                "record its results before it is killed.",
                id="ums.E003",
            )
        )
    if settings.UMS_IMPORT_TIME_LIMIT + 60 >= settings.CELERY_VISIBILITY_TIMEOUT:
        errors.append(
            Error(
                "UMS_IMPORT_TIME_LIMIT plus a minute must be below CELERY_VISIBILITY_TIMEOUT, or "
                "a long upload would be handed to a second worker while the first still runs.",
                id="ums.E005",
            )
        )
    if settings.UMS_DELIVERY_LEASE <= settings.CELERY_TASK_TIME_LIMIT:
        errors.append(
            Error(
                "UMS_DELIVERY_LEASE must be above CELERY_TASK_TIME_LIMIT: the sweeper would take "
                "back recipients that a live worker is still sending to, and send them twice.",
                id="ums.E006",
            )
        )
    if settings.UMS_SMTP_TIMEOUT >= settings.CELERY_TASK_SOFT_TIME_LIMIT:
        errors.append(
            Error(
                "UMS_SMTP_TIMEOUT must be below CELERY_TASK_SOFT_TIME_LIMIT: one slow SMTP "
                "reply would otherwise use up a task's whole time.",
                id="ums.E004",
            )
        )
    return errors


@register("ums", deploy=True)
def check_private_networks(app_configs: Iterable[Any] | None, **kwargs: Any) -> list[Warning]:
    if settings.UMS_SMTP_ALLOW_PRIVATE_NETWORKS and not settings.DEBUG:
        return [
            Warning(
                "UMS_SMTP_ALLOW_PRIVATE_NETWORKS is on: staff who configure senders can make "
                "this server connect to loopback and private addresses.",
                hint="Turn it off unless your SMTP relay really is on a private network.",
                id="ums.W002",
            )
        ]
    return []


@register("ums", deploy=True)
def check_production_services(app_configs: Iterable[Any] | None, **kwargs: Any) -> list[Warning]:
    if settings.DEBUG:
        return []
    warnings = []
    if not settings.CELERY_BROKER_URL:
        warnings.append(
            Warning(
                "CELERY_BROKER_URL is not set: tasks go through the file-system queue in "
                f"{settings.CELERY_BROKER_FOLDER}, which only workers on this machine can read.",
                hint="Set CELERY_BROKER_URL=redis://… (see docs/deployment.md).",
                id="ums.W003",
            )
        )
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        warnings.append(
            Warning(
                "The database is SQLite: fine for a trial, not for several workers sending.",
                hint="Set DATABASE_URL=postgres://… (see docs/deployment.md).",
                id="ums.W004",
            )
        )
    host = urlsplit(settings.UMS_PUBLIC_URL).hostname or ""
    if host in ("localhost", "") or _is_loopback(host):
        warnings.append(
            Warning(
                f"UMS_PUBLIC_URL is {settings.UMS_PUBLIC_URL}: the unsubscribe links in marketing "
                "mail would point at this machine's loopback address.",
                hint="Set UMS_PUBLIC_URL=https://<the public host of this server>.",
                id="ums.W005",
            )
        )
    return warnings


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

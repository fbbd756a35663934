"""Settings for UMS Email, read from the environment (and `.env`, when present).

Every variable is documented in `docs/configuration.md` and `.env.example`. A bad value stops
start-up with a message naming the variable, rather than running with a surprise.
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from ums.envparse import (
    env_bool,
    env_fernet_keys,
    env_int,
    env_path,
    env_ports,
    env_positive,
    env_strings,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"  # local state of a development install: SQLite, broker files
VAR_DIR.mkdir(exist_ok=True)

env = environ.Env()
# UMS_ENV_FILE names another file; set it empty to read none (the tests do).
ENV_FILE = os.environ.get("UMS_ENV_FILE", str(BASE_DIR / ".env"))
if ENV_FILE:
    environ.Env.read_env(ENV_FILE, overwrite=False)

DEBUG = env_bool(env, "DJANGO_DEBUG", default=False)

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off.")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"  # noqa: S105
# Earlier keys, still accepted for signatures (sessions, unsubscribe links in mail already sent).
SECRET_KEY_FALLBACKS = env_strings(env, "DJANGO_SECRET_KEY_FALLBACKS", default=[])

ALLOWED_HOSTS = env_strings(
    env, "DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS = env_strings(env, "DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "import_export",
    "rest_framework",
    "ums",
    "channels_app",
    "users_app",
    "messaging",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "ums.urls"
WSGI_APPLICATION = "ums.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'ums.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server, the worker, beat and the mail catcher share one file in `make run`:
    # WAL lets readers proceed during a write, IMMEDIATE avoids lock upgrades failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = env.str("DJANGO_LANGUAGE_CODE", default="en")
LANGUAGES = [("en", _("English")), ("zh-hans", _("Simplified Chinese"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env.str("DJANGO_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("DJANGO_STATIC_ROOT", default=BASE_DIR / "staticfiles")

MEDIA_ROOT = env.path("DJANGO_MEDIA_ROOT", default=VAR_DIR / "media")
MEDIA_URL = "media/"  # never served publicly: uploads are read by the app only

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool(env, "DJANGO_SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto.
if env_bool(env, "DJANGO_BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool(env, "DJANGO_SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env_int(env, "DJANGO_SECURE_HSTS_SECONDS", default=0)

# Mail that the project itself sends (password resets, error mails) — not channel mail,
# which always goes through a sender's own backend (channels_app.smtp).
EMAIL_BACKEND = env.str(
    "DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend"
)

# --- UMS ---------------------------------------------------------------------------------

# Fernet keys for secrets at rest. The first encrypts; all of them decrypt (key rotation).
UMS_FIELD_KEYS = env_fernet_keys(env, "UMS_FIELD_KEYS")
UMS_SMTP_ALLOWED_PORTS = env_ports(env, "UMS_SMTP_ALLOWED_PORTS", default="25,80,443,465")
UMS_SMTP_ALLOW_PRIVATE_NETWORKS = env_bool(env, "UMS_SMTP_ALLOW_PRIVATE_NETWORKS", default=False)
UMS_SMTP_TIMEOUT = env_positive(env, "UMS_SMTP_TIMEOUT", default=30.0)
UMS_SMTP_CA_BUNDLE = env_path(env, "UMS_SMTP_CA_BUNDLE")
# Minutes between automatic connection checks of enabled senders; 0 turns them off.
UMS_SENDER_HEALTH_INTERVAL = env_int(env, "UMS_SENDER_HEALTH_INTERVAL", default=60)
# The local mail catcher's pages in the console (development and demos).
UMS_MAILCATCHER = env_bool(env, "UMS_MAILCATCHER", default=DEBUG)
# Spreadsheet uploads of users and bindings.
UMS_IMPORT_MAX_BYTES = env_int(env, "UMS_IMPORT_MAX_BYTES", default=200 * 1024 * 1024, minimum=1)
UMS_IMPORT_MAX_UNZIPPED_BYTES = env_int(
    env, "UMS_IMPORT_MAX_UNZIPPED_BYTES", default=2 * 1024 * 1024 * 1024, minimum=1
)
UMS_IMPORT_SYNC_ROWS = env_int(env, "UMS_IMPORT_SYNC_ROWS", default=5000)
# Seconds an upload's background check or import may take (a million rows take a few minutes).
UMS_IMPORT_TIME_LIMIT = env_int(env, "UMS_IMPORT_TIME_LIMIT", default=1800, minimum=60)
# The delivery pipeline.
UMS_DELIVERY_BATCH_SIZE = env_int(env, "UMS_DELIVERY_BATCH_SIZE", default=500, minimum=1)
UMS_DELIVERY_MAX_ATTEMPTS = env_int(env, "UMS_DELIVERY_MAX_ATTEMPTS", default=5, minimum=1)
UMS_DELIVERY_RETRY_BASE = env_positive(env, "UMS_DELIVERY_RETRY_BASE", default=30.0)
# Seconds a claimed delivery may stay "sending" before the sweeper takes it back (a dead worker).
UMS_DELIVERY_LEASE = env_int(env, "UMS_DELIVERY_LEASE", default=600, minimum=1)
# Seconds a queued message or batch may wait for its task before the sweeper queues it again.
UMS_DISPATCH_GRACE = env_int(env, "UMS_DISPATCH_GRACE", default=120, minimum=1)
UMS_SWEEP_INTERVAL = env_positive(env, "UMS_SWEEP_INTERVAL", default=15.0)
UMS_MATERIAL_MAX_BYTES = env_int(env, "UMS_MATERIAL_MAX_BYTES", default=10 * 1024 * 1024, minimum=1)
UMS_MAILCATCHER_PORT = env_int(env, "UMS_MAILCATCHER_PORT", default=1025, minimum=1, maximum=65535)
# The address recipients and callback receivers reach this server at (unsubscribe links).
UMS_PUBLIC_URL = env.str("UMS_PUBLIC_URL", default="http://127.0.0.1:8000").rstrip("/")
# Status callbacks: POST timeout, retries after the first failure, and the wait between them.
UMS_CALLBACK_TIMEOUT = env_positive(env, "UMS_CALLBACK_TIMEOUT", default=10.0)
UMS_CALLBACK_RETRIES = env_int(env, "UMS_CALLBACK_RETRIES", default=3)
UMS_CALLBACK_RETRY_SECONDS = env_int(env, "UMS_CALLBACK_RETRY_SECONDS", default=50, minimum=1)
# Redis for the sending and API limits shared by all workers; empty: the broker's Redis, if any.
UMS_RATE_LIMIT_REDIS_URL = env.str("UMS_RATE_LIMIT_REDIS_URL", default="")
# Without Redis: the limits' file, shared by the worker processes of one machine.
UMS_RATE_LIMIT_FILE = env.path("UMS_RATE_LIMIT_FILE", default=VAR_DIR / "ratelimit.sqlite3")
# Seconds of sending one grant of a limited sender covers (smaller: finer, more round trips).
UMS_RATE_LIMIT_MARGIN = env_positive(env, "UMS_RATE_LIMIT_MARGIN", default=0.1)
UMS_RATE_LIMIT_PREFIX = env.str("UMS_RATE_LIMIT_PREFIX", default="ums:rl:")

# --- Celery ------------------------------------------------------------------------------

# Redis in production. Without a broker URL, a file-system transport under var/ lets a real,
# separate worker process run on a machine with no broker server installed.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_BROKER_FOLDER = env.path("CELERY_BROKER_FOLDER", default=VAR_DIR / "broker")
CELERY_VISIBILITY_TIMEOUT = env_int(env, "CELERY_VISIBILITY_TIMEOUT", default=3600, minimum=1)
CELERY_TASK_SOFT_TIME_LIMIT = env_int(env, "CELERY_TASK_SOFT_TIME_LIMIT", default=300, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int(env, "CELERY_TASK_TIME_LIMIT", default=360, minimum=1)
CELERY_BEAT_SCHEDULE_FILE = env.str(
    "CELERY_BEAT_SCHEDULE_FILE", default=str(VAR_DIR / "celerybeat-schedule")
)

# Exports of users' data need the model's "export" permission (given to data admins).
IMPORT_EXPORT_EXPORT_PERMISSION_CODE = "export"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # aiosmtpd logs every SMTP command of the mail catcher at INFO.
        "mail.log": {"level": "WARNING"},
    },
}

"""Parsers for UMS settings that refuse bad values with a message naming the variable."""

from pathlib import Path

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured


def env_fernet_keys(env: environ.Env, name: str) -> list[str]:
    keys = [key.strip() for key in env.list(name, default=[]) if key.strip()]
    for index, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(
                f"{name}: key #{index} is not a valid Fernet key (32 url-safe base64 bytes). "
                "Generate one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            ) from exc
    return keys


def env_ports(env: environ.Env, name: str, *, default: str) -> frozenset[int]:
    raw = env.str(name, default=default)
    ports: set[int] = set()
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ImproperlyConfigured(f"{name}: {item!r} is not a TCP port (1-65535).")
        ports.add(int(item))
    if not ports:
        raise ImproperlyConfigured(f"{name} must list at least one port.")
    return frozenset(ports)


def env_positive(env: environ.Env, name: str, *, default: float) -> float:
    try:
        value = env.float(name, default=default)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number of seconds.") from exc
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be greater than zero.")
    return value


def env_path(env: environ.Env, name: str) -> str:
    value = env.str(name, default="")
    if value and not Path(value).is_file():
        raise ImproperlyConfigured(f"{name}: no file at {value!r}.")
    return value


TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def env_bool(env: environ.Env, name: str, *, default: bool) -> bool:
    """A strict boolean: a typo such as `ture` stops start-up instead of meaning false."""
    raw = env.str(name, default="true" if default else "false").strip().lower()
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(f"{name}: {raw!r} is not a boolean (use true or false).")


def env_int(
    env: environ.Env, name: str, *, default: int, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = env.str(name, default=str(default)).strip()
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {raw!r} is not a whole number.") from exc
    if maximum is not None and not minimum <= value <= maximum:
        raise ImproperlyConfigured(f"{name} must be between {minimum} and {maximum}.")
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}.")
    return value


def env_strings(env: environ.Env, name: str, *, default: list[str]) -> list[str]:
    return [item.strip() for item in env.list(name, default=default) if item.strip()]

"""Encryption of secrets at rest (SMTP passwords, MasterSecrets) with rotating Fernet keys.

The first key of UMS_FIELD_KEYS encrypts; every key decrypts, so a new key can be put first and
`rotate_field_keys` re-encrypts the stored values before the old key is dropped.
"""

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with any configured key."""


@cache
def _fernet(keys: tuple[str, ...], secret_key: str, debug: bool) -> MultiFernet:
    if not keys:
        if not debug:
            raise ImproperlyConfigured("UMS_FIELD_KEYS is empty; see docs/configuration.md.")
        # Development only (system check ums.W001 says so): a key derived from SECRET_KEY.
        digest = hashlib.sha256(b"ums-field-key:" + secret_key.encode()).digest()
        keys = (base64.urlsafe_b64encode(digest).decode(),)
    return MultiFernet([Fernet(key) for key in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.UMS_FIELD_KEYS), settings.SECRET_KEY, settings.DEBUG)


def encrypt(plaintext: str) -> str:
    if not plaintext:
        return ""
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable(
            "A stored secret cannot be decrypted with the keys in UMS_FIELD_KEYS."
        ) from exc


def rotate(token: str) -> str:
    """Re-encrypt a token under the first key (no-op for empty values)."""
    if not token:
        return ""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable("A stored secret cannot be decrypted for rotation.") from exc

"""Provider API keys at rest: Fernet with keys from FLUXWEB_FERNET_KEYS, independent of SECRET_KEY.

The first key encrypts, all decrypt (MultiFernet), so keys rotate by prepending a new one and running
`provider rotate-keys`. A token no key can open raises: ciphertext is never sent to a provider as a key.
"""

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class KeyUnavailable(Exception):
    pass


@cache
def fernet() -> MultiFernet:
    try:
        return MultiFernet([Fernet(key) for key in settings.FERNET_KEYS])
    except ValueError as exc:
        raise ImproperlyConfigured(f"FLUXWEB_FERNET_KEYS holds a malformed key: {exc}") from None


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise KeyUnavailable(
            "The stored API key cannot be decrypted with FLUXWEB_FERNET_KEYS; set the key again in the admin."
        ) from None


def rotate(token: str) -> str:
    return fernet().rotate(token.encode()).decode()

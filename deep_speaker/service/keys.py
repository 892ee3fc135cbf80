"""API keys: made, listed and revoked with `deep-speaker-serve keys`, stored hashed.

A key reads ``dsk_<id>_<secret>``: a public 12-hex-digit id (what `keys list` and
`keys revoke` name) and 32 random bytes of secret (`secrets.token_urlsafe`). The
database keeps the id, the scopes and ``hashlib.scrypt(secret, salt, n=2**14, r=8,
p=1)`` with a random 16-byte salt, never the key: whoever reads the database cannot
call the API with what they read. The key is shown once, when it is made.

Scopes: ``embed``, ``verify``, ``identify``, ``enrol`` (enrol, list, read and delete
speakers) and ``admin`` (every scope). A server checks a key's scrypt hash once per
process and remembers only a SHA-256 of the keys it has accepted (in memory), so a
request costs one indexed lookup of the key's row, which also makes a revocation
take effect at the next request.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from deep_speaker.errors import InputError
from deep_speaker.service.store import KeyRecord, Store, check_name, utc_now

SCOPES = ("embed", "verify", "identify", "enrol", "admin")
PREFIX = "dsk"
# scrypt's cost: 16 MiB and about 50 ms per check on one core (the secret is 256 random bits, so the
# hash stands against reading the key out of a stolen database, not against guessing); stored per key,
# so a later deep-speaker can raise it for new keys and still check old ones.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
_KEY = re.compile(rf"{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})")


class ApiKeyError(InputError):
    """A key that cannot be made or revoked as asked."""


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once
    record: KeyRecord


def check_scopes(scopes) -> tuple[str, ...]:
    """Scopes in a stable order, each known.

    >>> check_scopes(["verify", "embed", "verify"])
    ('embed', 'verify')
    """
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ApiKeyError(f"unknown scope {unknown[0]!r}; choose from {', '.join(SCOPES)}")
    if not scopes:
        raise ApiKeyError(f"a key needs at least one scope ({', '.join(SCOPES)})")
    return tuple(scope for scope in SCOPES if scope in set(scopes))


def allows(scopes, needed: str) -> bool:
    """Whether a key with `scopes` may call an endpoint that needs `needed`.

    >>> allows(("admin",), "enrol"), allows(("verify",), "identify")
    (True, False)
    """
    return needed in scopes or "admin" in scopes


def parse_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    match = _KEY.fullmatch(key.strip())
    return (match.group(1), match.group(2)) if match else None


def _scrypt(secret: str, salt: bytes, kdf: str) -> bytes:
    name, n, r, p = kdf.split(":")
    if name != "scrypt":
        raise ApiKeyError(f"unknown key hash {name!r}")
    n, r, p = int(n), int(r), int(p)
    return hashlib.scrypt(secret.encode("ascii"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p + (1 << 20),
                          dklen=32)


def create_key(store: Store, scopes, name: str = "") -> NewKey:
    """Make a key with `scopes`, store its hash, and return it (the only time it is seen)."""
    scopes = check_scopes(scopes)
    check_name(name)
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    kdf = f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}"
    record = KeyRecord(key_id, name, scopes, kdf, salt.hex(), _scrypt(secret, salt, kdf).hex(), utc_now())
    store.add_key(record)
    return NewKey(f"{PREFIX}_{key_id}_{secret}", record)


def revoke_key(store: Store, key_or_id: str) -> str:
    """Revoke a key named by its id (or given whole); returns the id."""
    parsed = parse_key(key_or_id)
    key_id = parsed[0] if parsed else key_or_id.strip()
    if not store.revoke_key(key_id):
        raise ApiKeyError(f"no key with id {key_id!r} (see keys list)")
    return key_id


class KeyChecker:
    """Checks keys against the store; remembers (in memory, as SHA-256) which keys it
    has already verified with scrypt, so each key costs scrypt once per process.

    check() returns the key's record when the key is valid and not revoked, else None."""

    def __init__(self, store: Store, remembered: int = 4096):
        self.store = store
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._remembered = remembered

    def check(self, key: str) -> KeyRecord | None:
        parsed = parse_key(key)
        if parsed is None:
            return None
        key_id, secret = parsed
        record = self.store.key(key_id)
        if record is None or record.revoked is not None:
            return None
        fingerprint = hashlib.sha256(key.strip().encode("ascii")).digest()
        if self._verified.get(fingerprint) == key_id:
            self._verified.move_to_end(fingerprint)
            return record
        if not hmac.compare_digest(_scrypt(secret, bytes.fromhex(record.salt), record.kdf),
                                   bytes.fromhex(record.hash)):
            return None
        self._verified[fingerprint] = key_id
        while len(self._verified) > self._remembered:
            self._verified.popitem(last=False)
        return record

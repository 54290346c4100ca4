"""Who may read through the archive's `/v2/` API: nobody asked, an htpasswd file, or tokens.

The htpasswd file is the one distribution reads (`auth.htpasswd`): `user:hash` lines, bcrypt
only (`$2y$`, `$2a$`, `$2b$`; what `htpasswd -B` writes and the only kind distribution
accepts). It is read again when it changes, so accounts are added without a restart. A bcrypt
check costs tens of milliseconds by design and a pull makes dozens of requests, so a password
that checked out is remembered (as a SHA-256 of user and password, never the password) until
the file changes.

Bearer tokens are fixed strings (from `--registry-token-file`, one per line), compared in
constant time. Clients send them after a `Bearer` challenge (skopeo `--registry-token`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from pipeline.errors import UsageError

log = logging.getLogger("bale.serve")

_BCRYPT_PREFIXES = ("$2y$", "$2a$", "$2b$")


@dataclass(frozen=True)
class RegistryAuth:
    """How `/v2/` checks a request. With neither `htpasswd` nor `tokens`, everyone reads;
    with either, only holders of a credential, plus anonymous callers when `anonymous_read`."""

    htpasswd: Path | None = None
    tokens: frozenset[str] = frozenset()
    anonymous_read: bool = False
    realm: str = "bale"

    @property
    def required(self) -> bool:
        return (self.htpasswd is not None or bool(self.tokens)) and not self.anonymous_read

    @classmethod
    def from_files(
        cls,
        *,
        htpasswd: str | Path | None = None,
        token_file: str | Path | None = None,
        anonymous_read: bool = False,
    ) -> RegistryAuth:
        """The configuration the command line names; unreadable files are a UsageError."""
        tokens: frozenset[str] = frozenset()
        if token_file is not None:
            try:
                text = Path(token_file).read_text()
            except OSError as exc:
                raise UsageError(f"token file {token_file}: {exc.strerror}") from None
            tokens = frozenset(line.strip() for line in text.splitlines() if line.strip())
            if not tokens:
                raise UsageError(f"token file {token_file} holds no token")
        path = None
        if htpasswd is not None:
            path = Path(htpasswd)
            if not path.is_file():
                raise UsageError(f"htpasswd file {htpasswd} does not exist")
        return cls(htpasswd=path, tokens=tokens, anonymous_read=anonymous_read)

    def challenge(self) -> str:
        """The `WWW-Authenticate` value of a 401."""
        if self.htpasswd is not None:
            return f'Basic realm="{self.realm}"'
        return f'Bearer realm="{self.realm}",service="{self.realm}"'


@dataclass
class _Accounts:
    stamp: tuple[int, int] | None = None
    hashes: dict[str, bytes] = field(default_factory=dict)
    checked: set[bytes] = field(default_factory=set)


class Authenticator:
    """Checks `Authorization` headers against a `RegistryAuth`."""

    def __init__(self, config: RegistryAuth) -> None:
        self.config = config
        self._accounts = _Accounts()
        self._lock = threading.Lock()

    def allows(self, authorization: str | None) -> bool:
        """May a request with this `Authorization` header read?"""
        if not self.config.required and authorization is None:
            return True
        if authorization is None:
            return False
        scheme, _, credentials = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and self.config.htpasswd is not None:
            return self._basic(credentials.strip())
        if scheme == "bearer" and self.config.tokens:
            given = credentials.strip().encode()
            return any(hmac.compare_digest(given, t.encode()) for t in self.config.tokens)
        # A credential of a kind not configured: refused when credentials are needed, ignored
        # when anyone may read (a client's stale login must not break anonymous pulls).
        return not self.config.required

    def _basic(self, credentials: str) -> bool:
        try:
            user, sep, password = (
                base64.b64decode(credentials, validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        accounts = self._load()
        hashed = accounts.hashes.get(user)
        if hashed is None:
            return False
        token = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        if token in accounts.checked:
            return True
        if not bcrypt.checkpw(password.encode(), hashed):
            return False
        with self._lock:
            if accounts is self._accounts:
                accounts.checked.add(token)
        return True

    def _load(self) -> _Accounts:
        path = self.config.htpasswd
        assert path is not None
        try:
            st = os.stat(path)
        except OSError as exc:
            log.warning("htpasswd file %s: %s", path, exc.strerror)
            return _Accounts()
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._accounts.stamp == stamp:
                return self._accounts
            self._accounts = _Accounts(stamp, read_htpasswd(path))
            return self._accounts


def read_htpasswd(path: Path) -> dict[str, bytes]:
    """`user → bcrypt hash` from an htpasswd file; other hash kinds are skipped with a warning."""
    out: dict[str, bytes] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not hashed.startswith(_BCRYPT_PREFIXES):
            log.warning("%s line %d: not a bcrypt entry, skipped", path, number)
            continue
        out[user] = hashed.encode()
    return out

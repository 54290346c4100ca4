"""Registry authentication as logic, not I/O: a generator the client drives.

`RegistryAuth.flow(request, scopes)` yields the HTTP requests to make (the original request,
token requests to the realm, the original again with a token) and receives each answer; it never
touches the network, so every branch is testable with canned responses (the httpx design).
The client sends what is yielded and, when the generator finishes, uses the last response.

What it implements (distribution `docs/spec/auth/token.md` and `oauth.md`):
- `WWW-Authenticate` parsing (RFC 7235: several challenges, quoted strings with escapes);
- Basic auth, sent pre-emptively once the registry asked for it;
- Bearer tokens, one per scope set, cached until they expire (`expires_in`, 60 s by default),
  fetched pre-emptively for a new scope set once the realm is known; `token` or `access_token`;
- a 401 to a request that carried a cached token drops that token and re-authenticates once
  (tokens can expire mid-run), and `error="insufficient_scope"` asks again for the named scope;
- identity (refresh) tokens via the OAuth2 POST, falling back to GET when the realm says 404.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field, replace

from pipeline.errors import AuthError, RegistryError
from pipeline.registry.credentials import Credentials
from pipeline.transfer.retry import RETRYABLE_STATUS, Retryable, parse_retry_after

DEFAULT_TOKEN_LIFETIME = 60.0
"""Seconds a token lives when the token service does not say (the spec's default)."""

CLIENT_ID = "bale"

MAX_TOKEN_RESPONSE = 1024 * 1024

MAX_AUTH_ROUNDS = 4
"""401s one request may answer before the last one stands (bounds a misbehaving server)."""


@dataclass(frozen=True)
class Challenge:
    """One `WWW-Authenticate` challenge: a scheme (lower-cased) and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> list[str]:
        return (self.params.get("scope") or "").split()

    @property
    def error(self) -> str | None:
        return self.params.get("error")


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _token(text: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(text) and text[i] not in ' \t,="':
        i += 1
    return text[start:i], i


def _quoted(text: str, i: int) -> tuple[str, int]:
    """A quoted-string starting at the opening quote; backslash escapes the next character."""
    out: list[str] = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), i


def parse_www_authenticate(value: str | None) -> list[Challenge]:
    """All challenges in a `WWW-Authenticate` value, in order; malformed parts are skipped."""
    if not value:
        return []
    challenges: list[Challenge] = []
    scheme: str | None = None
    params: dict[str, str] = {}
    i = 0
    text = value
    while i < len(text):
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        word, j = _token(text, i)
        if not word:  # stray character
            i = j + 1
            continue
        k = _skip_ws(text, j)
        if k < len(text) and text[k] == "=" and scheme is not None:
            k = _skip_ws(text, k + 1)
            if k < len(text) and text[k] == '"':
                val, i = _quoted(text, k)
            else:
                val, i = _token(text, k)
            params[word.lower()] = val
            continue
        if k < len(text) and text[k] == "=":  # token68 or junk before any scheme
            i = k + 1
            continue
        if scheme is not None:
            challenges.append(Challenge(scheme, params))
        scheme, params = word.lower(), {}
        i = j
    if scheme is not None:
        challenges.append(Challenge(scheme, params))
    return challenges


@dataclass(frozen=True)
class AuthRequest:
    """An HTTP request the flow wants sent. `token_request` ones are read whole by the driver."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    token_request: bool = False

    def with_header(self, name: str, value: str) -> AuthRequest:
        headers = {k: v for k, v in self.headers.items() if k.lower() != name.lower()}
        headers[name] = value
        return replace(self, headers=headers)


@dataclass(frozen=True)
class AuthResponse:
    """What the flow needs back: status, headers (any case), and the body of token requests."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lower:
                return value
        return None


@dataclass
class _Token:
    value: str
    expires: float


@dataclass(frozen=True)
class _Fetched:
    value: str
    lifetime: float


def basic_header(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


Flow = Generator[AuthRequest, AuthResponse, None]


class RegistryAuth:
    """Authentication state for one registry: learned scheme, realm, and cached tokens.

    Thread-safe: many transfers share one instance. `credentials_for(repository)` supplies the
    credentials for a repository (namespaced entries in auth.json can differ per repository).
    """

    def __init__(
        self,
        registry: str,
        credentials_for: Callable[[str | None], Credentials | None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._credentials_for = credentials_for
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[frozenset[str], Credentials | None], _Token] = {}
        self._bearer: Challenge | None = None
        self._basic = False

    # ---- state -------------------------------------------------------------------------------

    def _cached(self, key: tuple[frozenset[str], Credentials | None]) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                return None
            if self._clock() >= token.expires:
                del self._tokens[key]
                return None
            return token.value

    def _store(self, key: tuple[frozenset[str], Credentials | None], fetched: _Fetched) -> None:
        # Renew a little early so a token never expires between our check and the server's.
        margin = min(10.0, fetched.lifetime / 10)
        with self._lock:
            self._tokens[key] = _Token(fetched.value, self._clock() + fetched.lifetime - margin)

    def _drop(self, key: tuple[frozenset[str], Credentials | None], value: str) -> None:
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.value == value:
                del self._tokens[key]

    # ---- the flow ----------------------------------------------------------------------------

    def flow(self, request: AuthRequest, scopes: Iterable[str] = ()) -> Flow:
        """Yield `request` (authorised as well as we know how), then whatever a 401 calls for."""
        wanted = frozenset(scopes)
        creds = self._credentials_for(_repository_of(wanted))
        key = (wanted, creds)

        token = self._cached(key)
        if token is None and self._bearer is not None and wanted:
            fetched = yield from self._fetch_token(self._bearer, wanted, creds)
            self._store(key, fetched)
            token = fetched.value
        sent_basic = False
        if token is not None:
            response = yield request.with_header("Authorization", f"Bearer {token}")
        elif self._basic and creds is not None and creds.username:
            sent_basic = True
            response = yield request.with_header("Authorization", _basic(creds))
        else:
            response = yield request

        asked: set[frozenset[str]] = set()
        for _ in range(MAX_AUTH_ROUNDS):
            if response.status != 401:
                return
            challenges = parse_www_authenticate(response.header("WWW-Authenticate"))
            bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
            basic = next((c for c in challenges if c.scheme == "basic"), None)
            if bearer is not None:
                self._bearer = bearer
                if token is not None:
                    # The token we sent was refused: expired, revoked, or short of a scope.
                    self._drop(key, token)
                scope_set = wanted | frozenset(bearer.scopes)
                if scope_set in asked:
                    return  # a fresh token for these scopes was refused: the 401 is the answer
                asked.add(scope_set)
                fetched = yield from self._fetch_token(bearer, scope_set, creds)
                self._store(key, fetched)
                if scope_set != wanted:
                    self._store((scope_set, creds), fetched)
                token = fetched.value
                response = yield request.with_header("Authorization", f"Bearer {token}")
            elif basic is not None:
                self._basic = True
                if creds is None or not creds.username or sent_basic:
                    return
                sent_basic = True
                response = yield request.with_header("Authorization", _basic(creds))
            else:
                return

    def _fetch_token(
        self, challenge: Challenge, scopes: frozenset[str], creds: Credentials | None
    ) -> Generator[AuthRequest, AuthResponse, _Fetched]:
        realm = challenge.realm or ""
        if not realm.startswith(("https://", "http://")):
            raise AuthError(
                f"{self.registry}: token realm {realm!r} is not an http(s) URL",
                registry=self.registry,
            )
        service = challenge.service
        ordered = sorted(scopes)
        response: AuthResponse | None = None
        if creds is not None and creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": CLIENT_ID,
                "access_type": "offline",
            }
            if service:
                form["service"] = service
            if ordered:
                form["scope"] = " ".join(ordered)
            response = yield AuthRequest(
                "POST",
                realm,
                # A realm that answers 404 without reading the form would leave it on a
                # kept-alive connection, to be misread as the next request.
                {"Content-Type": "application/x-www-form-urlencoded", "Connection": "close"},
                urllib.parse.urlencode(form).encode(),
                token_request=True,
            )
            if response.status == 404:
                response = None  # this realm has no OAuth2 endpoint: the plain GET below
        if response is None:
            query: list[tuple[str, str]] = []
            if service:
                query.append(("service", service))
            query.extend(("scope", s) for s in ordered)
            headers: dict[str, str] = {}
            if creds is not None and creds.username:
                query.append(("account", creds.username))
            if creds is not None and creds.username and not creds.identity_token:
                # An identity token alone is not a password: without OAuth2 the realm gets
                # an anonymous request rather than a refresh token it would not understand.
                headers["Authorization"] = basic_header(creds.username, creds.password)
            sep = "&" if "?" in realm else "?"
            url = realm + (sep + urllib.parse.urlencode(query) if query else "")
            response = yield AuthRequest("GET", url, headers, token_request=True)
        return self._token_from(response, realm)

    def _token_from(self, response: AuthResponse, realm: str) -> _Fetched:
        host = urllib.parse.urlsplit(realm).netloc or realm
        status = response.status
        if status in (401, 403):
            raise AuthError(
                f"{self.registry}: the token service at {host} refused the credentials ({status})",
                registry=self.registry,
                status=status,
            )
        if status in RETRYABLE_STATUS:
            raise Retryable(
                f"token service at {host}: HTTP {status}",
                parse_retry_after(response.header("Retry-After")),
            )
        if status != 200:
            raise RegistryError(
                f"{self.registry}: the token service at {host} answered HTTP {status}",
                registry=self.registry,
                status=status,
            )
        try:
            data = json.loads(response.body)
        except ValueError:
            data = None
        token = None
        if isinstance(data, dict):
            token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError(
                f"{self.registry}: the token service at {host} returned no token",
                registry=self.registry,
            )
        lifetime = DEFAULT_TOKEN_LIFETIME
        expires_in = data.get("expires_in") if isinstance(data, dict) else None
        if (
            isinstance(expires_in, int | float)
            and not isinstance(expires_in, bool)
            and expires_in > 0
        ):
            lifetime = float(expires_in)
        return _Fetched(token, lifetime)


def _basic(creds: Credentials) -> str:
    return basic_header(creds.username, creds.password)


def _repository_of(scopes: frozenset[str]) -> str | None:
    """The repository of the first `repository:<name>:<actions>` scope (for credentials)."""
    for scope in sorted(scopes):
        kind, _, rest = scope.partition(":")
        if kind == "repository" and ":" in rest:
            return rest.rsplit(":", 1)[0]
    return None


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"

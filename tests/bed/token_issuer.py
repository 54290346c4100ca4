"""A token server for distribution's token auth, so registry auth is tested end to end.

Implements the two halves of distribution's `docs/spec/auth/token.md` and `oauth.md`:
`GET /token?service=&scope=…` (optional Basic auth, `offline_token=true` for a refresh token)
and `POST /token` with a form `grant_type=password|refresh_token`. Tokens are ES256 JWTs whose
`x5c` header carries a leaf certificate signed by a throw-away CA; the CA certificate is the
registry's `rootcertbundle`. Distribution 2.8.2 checks: `iss` equals the configured issuer,
`aud` (a string, not a list) equals the configured service, `exp`/`nbf` with 60 s leeway, the
x5c chain up to the bundle, then the signature (raw r||s, not DER).

Because of that 60 s leeway, the `exp` claim is set `lifetime - 60` seconds after issue: the
registry then refuses a token exactly `lifetime` seconds after it was issued, the moment
`expires_in` tells the client it has expired. Tests can make tokens die in two seconds.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

REGISTRY_LEEWAY = 60
"""Seconds distribution 2.8.2 adds to `exp` (and takes from `nbf`) when it checks a token."""

Policy = Callable[[str | None, str, str, Sequence[str]], Sequence[str]]
"""(account or None, resource type, resource name, requested actions) -> granted actions."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        """`type:name:actions`; the name may itself hold colons (`repository:a:b:pull`)."""
        kind, _, rest = text.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name:
            raise ValueError(f"bad scope {text!r}")
        return cls(kind, name, tuple(a for a in actions.split(",") if a))

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


@dataclass(frozen=True)
class TokenRequest:
    """One request to the token endpoint, answered or refused."""

    method: str
    grant: str
    """`get`, `password` or `refresh_token`."""
    account: str | None
    service: str | None
    scopes: tuple[Scope, ...]
    status: int
    granted: tuple[Scope, ...] = ()
    refresh_token_issued: bool = False
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class _Signer:
    key: ec.EllipticCurvePrivateKey
    chain: tuple[str, ...]
    ca_pem: bytes


def _make_signer(common_name: str) -> _Signer:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    der = serialization.Encoding.DER
    chain = tuple(base64.b64encode(c.public_bytes(der)).decode() for c in (leaf, ca))
    return _Signer(key, chain, ca.public_bytes(serialization.Encoding.PEM))


class TokenIssuer:
    """A token service on a free loopback port, counting every token it hands out.

    `users` maps account to password (one random account when omitted: `username`,
    `password`). A known account gets every action it asks for; anonymous callers get pull
    only, or nothing with `anonymous_pull=False`; `policy` replaces both rules. Attributes
    `lifetime`, `anonymous_pull`, `oauth_post` and `policy` may be changed while it runs.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        service: str = "bale-bed-registry",
        issuer: str = "bale-bed-issuer",
        lifetime: int = 300,
        anonymous_pull: bool = True,
        oauth_post: bool = True,
        policy: Policy | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        if users is None:
            users = {f"bed-{secrets.token_hex(3)}": secrets.token_urlsafe(12)}
        self.users: dict[str, str] = dict(users)
        self.service = service
        self.issuer = issuer
        self.lifetime = lifetime
        self.anonymous_pull = anonymous_pull
        self.oauth_post = oauth_post
        """False answers POST with 404, as registries without OAuth2 do (clients use GET)."""
        self.policy = policy
        self.requests: list[TokenRequest] = []
        self.refresh_tokens: dict[str, str] = {}
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._signer = _make_signer(issuer)
        self.rootcertbundle = workdir / "token-ca.pem"
        self.rootcertbundle.write_bytes(self._signer.ca_pem)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- identity ----------------------------------------------------------------------

    @property
    def username(self) -> str:
        return next(iter(self.users))

    @property
    def password(self) -> str:
        return self.users[self.username]

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("token issuer is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def registry_auth_config(self) -> dict[str, Any]:
        """The `auth.token` section of a registry config that trusts this issuer."""
        return {
            "realm": self.realm,
            "service": self.service,
            "issuer": self.issuer,
            "rootcertbundle": str(self.rootcertbundle),
        }

    # ---- counters ----------------------------------------------------------------------

    @property
    def issued(self) -> list[TokenRequest]:
        """Requests that got a token (status 200)."""
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    @property
    def tokens_issued(self) -> int:
        return len(self.issued)

    def count(self, grant: str | None = None, account: str | None = None) -> int:
        """Tokens issued, optionally only for one grant (`get`, `password`, `refresh_token`)."""
        return sum(
            1
            for r in self.issued
            if (grant is None or r.grant == grant) and (account is None or r.account == account)
        )

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """Answer the next `count` requests with `status`, to test clients' retries."""
        with self._lock:
            self._failures.extend([status] * count)

    # ---- tokens ------------------------------------------------------------------------

    def grant(self, account: str | None, scope: Scope) -> tuple[str, ...]:
        if self.policy is not None:
            return tuple(self.policy(account, scope.type, scope.name, scope.actions))
        if account is not None:
            return scope.actions
        if self.anonymous_pull and scope.type == "repository":
            return tuple(a for a in scope.actions if a == "pull")
        return ()

    def make_token(
        self,
        account: str | None,
        scopes: Sequence[Scope],
        *,
        lifetime: int | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> tuple[str, tuple[Scope, ...]]:
        """Sign a JWT for `account`; overrides exist so tests can forge bad tokens."""
        now = int(time.time())
        life = self.lifetime if lifetime is None else lifetime
        granted = []
        for s in scopes:
            actions = self.grant(account, s)
            if actions:
                granted.append(Scope(s.type, s.name, tuple(actions)))
        claims = {
            "iss": issuer or self.issuer,
            "sub": account or "",
            "aud": audience or self.service,
            "exp": now + life - REGISTRY_LEEWAY,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [
                {"type": g.type, "name": g.name, "actions": list(g.actions)} for g in granted
            ],
        }
        header = {"typ": "JWT", "alg": "ES256", "x5c": list(self._signer.chain)}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der = self._signer.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + _b64url(signature), tuple(granted)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> TokenIssuer:
        if self._server is not None:
            return self
        issuer = self

        class Handler(_TokenHandler):
            owner = issuer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="token-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        self._thread = None

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, req: TokenRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def _take_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None


class _TokenHandler(BaseHTTPRequestHandler):
    owner: TokenIssuer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] = {}) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _basic(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return ("", "")
        return user, password

    def _refuse(self, method: str, grant: str, account: str | None, status: int, why: str) -> None:
        self.owner._record(TokenRequest(method, grant, account, None, (), status))
        headers = {"WWW-Authenticate": 'Basic realm="bale-bed"'} if status == 401 else {}
        self._send(status, {"error": why, "details": why}, headers)

    def _issue(
        self,
        method: str,
        grant: str,
        account: str | None,
        service: str | None,
        scopes: list[str],
        refresh: bool,
    ) -> None:
        owner = self.owner
        try:
            parsed = tuple(Scope.parse(s) for s in scopes)
        except ValueError as exc:
            self._refuse(method, grant, account, 400, str(exc))
            return
        token, granted = owner.make_token(account, parsed)
        now = time.time()
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": owner.lifetime,
            "issued_at": _rfc3339(now),
        }
        if method == "POST":
            body = {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": owner.lifetime,
                "issued_at": _rfc3339(now),
                "scope": " ".join(str(g) for g in granted),
            }
        if refresh and account is not None:
            rt = secrets.token_urlsafe(24)
            with owner._lock:
                owner.refresh_tokens[rt] = account
            body["refresh_token"] = rt
        owner._record(
            TokenRequest(
                method, grant, account, service, parsed, 200, granted, "refresh_token" in body
            )
        )
        self._send(200, body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/token":
            self._send(404, {"error": "not found"})
            return
        if (status := self.owner._take_failure()) is not None:
            self._refuse("GET", "get", None, status, "injected failure")
            return
        query = parse_qs(url.query)
        scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
        service = query.get("service", [None])[0]
        account: str | None = None
        creds = self._basic()
        if creds is not None:
            user, password = creds
            if self.owner.users.get(user) != password or not user:
                self._refuse("GET", "get", user or None, 401, "incorrect username or password")
                return
            account = user
        offline = query.get("offline_token", ["false"])[0].lower() == "true"
        self._issue("GET", "get", account, service, scopes, offline)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/token" or not self.owner.oauth_post:
            self._send(404, {"error": "not found"})
            return
        if (status := self.owner._take_failure()) is not None:
            self._refuse("POST", "unknown", None, status, "injected failure")
            return
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        grant = form.get("grant_type", [""])[0]
        scopes = [s for value in form.get("scope", []) for s in value.split(" ") if s]
        service = form.get("service", [None])[0]
        if grant == "password":
            user = form.get("username", [""])[0]
            if not user or self.owner.users.get(user) != form.get("password", [None])[0]:
                self._refuse("POST", grant, user or None, 401, "invalid_grant")
                return
            self._issue("POST", grant, user, service, scopes, True)
        elif grant == "refresh_token":
            rt = form.get("refresh_token", [""])[0]
            with self.owner._lock:
                user = self.owner.refresh_tokens.get(rt)
            if user is None:
                self._refuse("POST", grant, None, 401, "invalid_grant")
                return
            self._issue("POST", grant, user, service, scopes, False)
        else:
            self._refuse("POST", grant, None, 400, "unsupported_grant_type")

"""The auth flow as pure logic: canned answers in, requests out, no network.

End-to-end auth against real registries and a real token service is in test_registry_client.py;
these tests pin down the branches that are hard to provoke there (expiry, insufficient_scope,
malformed challenges, OAuth2 fallbacks) with a scripted server.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Callable

import pytest

from pipeline.errors import AuthError, RegistryError
from pipeline.registry.auth import (
    AuthRequest,
    AuthResponse,
    Challenge,
    RegistryAuth,
    parse_www_authenticate,
)
from pipeline.registry.credentials import Credentials
from pipeline.transfer.retry import Retryable

REALM = "https://auth.example.com/token"
BEARER = f'Bearer realm="{REALM}",service="registry.example.com"'
MANIFEST = "https://registry.example.com/v2/team/app/manifests/1.0"
PULL = "repository:team/app:pull"


# ---- WWW-Authenticate parsing ------------------------------------------------------------------


def test_parse_bearer_challenge() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    [c] = parse_www_authenticate(header)
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.docker.io/token"
    assert c.service == "registry.docker.io"
    assert c.scopes == ["repository:samalba/my-app:pull,push"]


def test_parse_several_challenges_and_quoting() -> None:
    header = (
        'Basic realm="a, \\"quoted\\" realm", '
        'Bearer realm="https://r/token", error="insufficient_scope", '
        'scope="repository:a:pull repository:b:pull", service=plain'
    )
    basic, bearer = parse_www_authenticate(header)
    assert basic == Challenge("basic", {"realm": 'a, "quoted" realm'})
    assert bearer.error == "insufficient_scope"
    assert bearer.scopes == ["repository:a:pull", "repository:b:pull"]
    assert bearer.service == "plain"


@pytest.mark.parametrize("header", ["", None, "Bearer", "   ", '=junk, Basic realm="x"'])
def test_parse_degenerate(header: str | None) -> None:
    parsed = parse_www_authenticate(header)
    assert all(isinstance(c, Challenge) for c in parsed)


def test_parse_case_insensitive_scheme_and_params() -> None:
    [c] = parse_www_authenticate('BEARER Realm="https://x/t", SERVICE="s"')
    assert (c.scheme, c.realm, c.service) == ("bearer", "https://x/t", "s")


# ---- a scripted server -------------------------------------------------------------------------


class Server:
    """Answers the flow's requests; records them; token lifetimes and scopes are settable."""

    def __init__(self, handler: Callable[[Server, AuthRequest], AuthResponse]) -> None:
        self.handler = handler
        self.seen: list[AuthRequest] = []
        self.issued = 0

    def __call__(self, req: AuthRequest) -> AuthResponse:
        self.seen.append(req)
        return self.handler(self, req)

    def token_requests(self) -> list[AuthRequest]:
        return [r for r in self.seen if r.token_request]

    def token(self, body: dict[str, object] | None = None) -> AuthResponse:
        self.issued += 1
        data = body if body is not None else {"token": f"tok-{self.issued}", "expires_in": 300}
        return AuthResponse(200, {"Content-Type": "application/json"}, json.dumps(data).encode())


def drive(auth: RegistryAuth, server: Server, scopes: tuple[str, ...] = (PULL,)) -> AuthResponse:
    """What the client does: send what the flow yields, feed back the answers."""
    flow = auth.flow(AuthRequest("GET", MANIFEST, {"Accept": "x"}), scopes)
    request = next(flow)
    while True:
        response = server(request)
        try:
            request = flow.send(response)
        except StopIteration:
            return response


def bearer_registry(valid: Callable[[str], bool]) -> Callable[[Server, AuthRequest], AuthResponse]:
    """A registry that wants a Bearer token `valid` accepts, with a token service."""

    def handle(server: Server, req: AuthRequest) -> AuthResponse:
        if req.token_request:
            return server.token()
        header = req.headers.get("Authorization", "")
        if header.startswith("Bearer ") and valid(header[7:]):
            return AuthResponse(200, {})
        return AuthResponse(401, {"WWW-Authenticate": f'{BEARER},scope="{PULL}"'})

    return handle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def anonymous(_repo: str | None) -> Credentials | None:
    return None


# ---- flows -------------------------------------------------------------------------------------


def test_anonymous_request_passes_untouched() -> None:
    server = Server(lambda s, r: AuthResponse(200, {}))
    assert drive(RegistryAuth("r", anonymous), server).status == 200
    assert "Authorization" not in server.seen[0].headers


def test_bearer_flow_then_token_is_cached() -> None:
    server = Server(bearer_registry(lambda t: t == "tok-1"))
    auth = RegistryAuth("registry.example.com", anonymous)
    assert drive(auth, server).status == 200
    token_req = server.token_requests()[0]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(token_req.url).query)
    assert query == {"service": ["registry.example.com"], "scope": [PULL]}
    assert "Authorization" not in token_req.headers  # anonymous: no Basic to the realm
    assert [r.headers.get("Authorization") for r in server.seen if not r.token_request] == [
        None,
        "Bearer tok-1",
    ]
    # Second request: token sent pre-emptively, no new token, no 401 round trip.
    server.seen.clear()
    assert drive(auth, server).status == 200
    assert [r.headers.get("Authorization") for r in server.seen] == ["Bearer tok-1"]


def test_basic_credentials_go_to_the_token_service_only() -> None:
    creds = Credentials("alice", "s3cret")
    server = Server(bearer_registry(lambda t: True))
    drive(RegistryAuth("r", lambda _: creds), server)
    token_req = server.token_requests()[0]
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert token_req.headers["Authorization"] == expected
    assert "account=alice" in token_req.url
    registry_headers = [
        r.headers.get("Authorization", "") for r in server.seen if not r.token_request
    ]
    assert not any(h.startswith("Basic") for h in registry_headers)


def test_new_scope_set_fetches_token_without_a_401() -> None:
    server = Server(bearer_registry(lambda t: True))
    auth = RegistryAuth("r", anonymous)
    drive(auth, server)
    server.seen.clear()
    other = "repository:team/other:pull"
    drive(auth, server, (other,))
    assert server.seen[0].token_request  # realm already known: token first
    assert "repository%3Ateam%2Fother%3Apull" in server.seen[0].url
    assert server.seen[1].headers["Authorization"].startswith("Bearer ")
    assert len(server.seen) == 2


def test_token_expiry_uses_expires_in() -> None:
    clock = Clock()
    server = Server(bearer_registry(lambda t: True))
    auth = RegistryAuth("r", anonymous, clock=clock)
    drive(auth, server)
    assert server.issued == 1
    clock.now += 200  # of 300 s
    drive(auth, server)
    assert server.issued == 1
    clock.now += 95  # within the renewal margin before expiry
    drive(auth, server)
    assert server.issued == 2


def test_default_lifetime_is_60_seconds_and_access_token_is_accepted() -> None:
    clock = Clock()

    def handle(server: Server, req: AuthRequest) -> AuthResponse:
        if req.token_request:
            return server.token({"access_token": f"acc-{server.issued + 1}"})
        if req.headers.get("Authorization", "").startswith("Bearer acc-"):
            return AuthResponse(200, {})
        return AuthResponse(401, {"WWW-Authenticate": BEARER})

    server = Server(handle)
    auth = RegistryAuth("r", anonymous, clock=clock)
    assert drive(auth, server).status == 200
    clock.now += 45
    drive(auth, server)
    assert server.issued == 1
    clock.now += 10  # 55 s: inside the 6 s margin of a 60 s token
    drive(auth, server)
    assert server.issued == 2


def test_refused_cached_token_is_renewed_once() -> None:
    """A token that expired server-side mid-run: drop it, get a fresh one, retry."""
    current = {"valid": "tok-1"}
    server = Server(bearer_registry(lambda t: t == current["valid"]))
    auth = RegistryAuth("r", anonymous)
    drive(auth, server)
    current["valid"] = "tok-2"  # the server no longer accepts tok-1
    server.seen.clear()
    assert drive(auth, server).status == 200
    assert [r.headers.get("Authorization") for r in server.seen if not r.token_request] == [
        "Bearer tok-1",
        "Bearer tok-2",
    ]


def test_a_fresh_token_refused_again_ends_with_the_401() -> None:
    server = Server(bearer_registry(lambda t: False))
    response = drive(RegistryAuth("r", anonymous), server)
    assert response.status == 401
    assert server.issued == 1  # no loop


def test_insufficient_scope_asks_for_the_named_scope() -> None:
    extra = "repository:team/base:pull"

    def handle(server: Server, req: AuthRequest) -> AuthResponse:
        if req.token_request:
            scopes = urllib.parse.parse_qs(urllib.parse.urlsplit(req.url).query)["scope"]
            return server.token({"token": "+".join(sorted(scopes))})
        if req.headers.get("Authorization") == "Bearer " + "+".join(sorted([extra, PULL])):
            return AuthResponse(200, {})
        if req.headers.get("Authorization"):
            challenge = f'{BEARER},error="insufficient_scope",scope="{extra}"'
            return AuthResponse(401, {"WWW-Authenticate": challenge})
        return AuthResponse(401, {"WWW-Authenticate": f'{BEARER},scope="{PULL}"'})

    server = Server(handle)
    assert drive(RegistryAuth("r", anonymous), server).status == 200
    assert server.issued == 2


def test_basic_auth_is_then_sent_preemptively() -> None:
    creds = Credentials("bob", "pw")
    expected = "Basic " + base64.b64encode(b"bob:pw").decode()

    def handle(server: Server, req: AuthRequest) -> AuthResponse:
        if req.headers.get("Authorization") == expected:
            return AuthResponse(200, {})
        return AuthResponse(401, {"WWW-Authenticate": 'Basic realm="registry"'})

    server = Server(handle)
    auth = RegistryAuth("r", lambda _: creds)
    assert drive(auth, server).status == 200
    assert len(server.seen) == 2
    server.seen.clear()
    assert drive(auth, server).status == 200
    assert len(server.seen) == 1


def test_basic_without_credentials_returns_the_401() -> None:
    server = Server(lambda s, r: AuthResponse(401, {"WWW-Authenticate": 'Basic realm="x"'}))
    assert drive(RegistryAuth("r", anonymous), server).status == 401
    assert len(server.seen) == 1


def test_wrong_basic_password_is_not_retried_forever() -> None:
    server = Server(lambda s, r: AuthResponse(401, {"WWW-Authenticate": 'Basic realm="x"'}))
    assert drive(RegistryAuth("r", lambda _: Credentials("u", "bad")), server).status == 401
    assert len(server.seen) == 2


def test_identity_token_uses_oauth2_post() -> None:
    creds = Credentials("", "", identity_token="refresh-123")
    server = Server(bearer_registry(lambda t: True))
    drive(RegistryAuth("r", lambda _: creds), server)
    [post] = server.token_requests()
    assert post.method == "POST"
    form = urllib.parse.parse_qs((post.body or b"").decode())
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == ["refresh-123"]
    assert form["service"] == ["registry.example.com"]
    assert form["scope"] == [PULL]
    assert form["client_id"] == ["bale"]


def test_identity_token_falls_back_to_get_on_404() -> None:
    creds = Credentials("", "", identity_token="refresh-123")

    def handle(server: Server, req: AuthRequest) -> AuthResponse:
        if req.token_request and req.method == "POST":
            return AuthResponse(404, {})
        return bearer_registry(lambda t: True)(server, req)

    server = Server(handle)
    assert drive(RegistryAuth("r", lambda _: creds), server).status == 200
    post, get = server.token_requests()
    assert (post.method, get.method) == ("POST", "GET")
    assert "refresh-123" not in get.url and "Authorization" not in get.headers


@pytest.mark.parametrize("status", [401, 403])
def test_token_service_refusal_is_an_auth_error(status: int) -> None:
    def handle(server: Server, req: AuthRequest) -> AuthResponse:
        if req.token_request:
            return AuthResponse(status, {})
        return AuthResponse(401, {"WWW-Authenticate": BEARER})

    with pytest.raises(AuthError, match=r"^r: the token service at auth.example.com refused"):
        drive(RegistryAuth("r", lambda _: Credentials("u", "topsecret")), Server(handle))


def test_token_service_503_is_retryable_with_retry_after() -> None:
    def handle(server: Server, req: AuthRequest) -> AuthResponse:
        if req.token_request:
            return AuthResponse(503, {"Retry-After": "7"})
        return AuthResponse(401, {"WWW-Authenticate": BEARER})

    with pytest.raises(Retryable) as info:
        drive(RegistryAuth("r", anonymous), Server(handle))
    assert info.value.retry_after == 7


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"token": ""}'])
def test_token_response_without_token(body: bytes) -> None:
    def handle(server: Server, req: AuthRequest) -> AuthResponse:
        if req.token_request:
            return AuthResponse(200, {}, body)
        return AuthResponse(401, {"WWW-Authenticate": BEARER})

    with pytest.raises(AuthError, match="returned no token"):
        drive(RegistryAuth("r", anonymous), Server(handle))


def test_realm_must_be_http() -> None:
    def handle(server: Server, req: AuthRequest) -> AuthResponse:
        return AuthResponse(401, {"WWW-Authenticate": 'Bearer realm="file:///etc/passwd"'})

    with pytest.raises(RegistryError, match="not an http"):
        drive(RegistryAuth("r", anonymous), Server(handle))


def test_tokens_are_kept_per_credentials() -> None:
    """Namespaced auth.json entries: two repositories, two accounts, two tokens."""
    accounts = {"team/app": Credentials("a", "1"), "team/other": Credentials("b", "2")}
    server = Server(bearer_registry(lambda t: True))
    auth = RegistryAuth("r", lambda repo: accounts.get(repo or ""))
    drive(auth, server, (PULL,))
    drive(auth, server, ("repository:team/other:pull",))
    users = [
        base64.b64decode(r.headers["Authorization"][6:]).decode().split(":")[0]
        for r in server.token_requests()
    ]
    assert users == ["a", "b"]

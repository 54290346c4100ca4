"""Registry credentials, found where skopeo, podman and docker look for them.

Order (first file that has an answer wins), as containers/image `pkg/docker/config` does:
`--authfile`, `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`; then
`$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config`), `$DOCKER_CONFIG/config.json` or
`~/.docker/config.json`, and the legacy `~/.dockercfg`. An explicit authfile (flag or
`$REGISTRY_AUTH_FILE`) replaces the default locations rather than adding to them, as in skopeo.

Within a file: `credHelpers[<registry>]`, then `auths` keys from the most specific namespace
(`quay.io/org/repo`) down to the registry, then keys that normalise to the registry (URLs such as
`https://index.docker.io/v1/`), then `credsStore`. Helpers are run as
`docker-credential-<name> get` with the server on stdin and never through a shell.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError
from pipeline.refs import DOCKER_HUB

log = logging.getLogger("bale.credentials")

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
"""The key docker (and its credential helpers) use for Docker Hub."""

HELPER_TIMEOUT = 30.0
"""Seconds a credential helper may take before we give up on it."""

_TOKEN_USERNAME = "<token>"


@dataclass(frozen=True)
class Credentials:
    """A username and password (or an identity token, a refresh token for OAuth2)."""

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        token = ", identity_token=***" if self.identity_token else ""
        return f"Credentials(username={self.username!r}, password=***{token})"

    __str__ = __repr__


@dataclass(frozen=True)
class CredentialFlags:
    """The options that give one registry's credentials on this command line.

    Errors name them (`give --src-creds USER:PASS`), so the hint is one the user can act on: the
    same registry is `--src-creds` in `archive` and `--dest-creds` in `restore`.
    """

    creds: str = "--creds"
    authfile: str = "--authfile"
    prefix: str = ""
    """How the command spells this registry's other options (`src-`, `dest-`, none):
    TLS hints name `--src-cert-dir`, `--dest-tls-verify=false`."""

    @classmethod
    def of_role(cls, role: str, authfile: str = "--authfile") -> CredentialFlags:
        """The options of the `src` or `dest` registry (`--src-creds`, `--src-cert-dir`, ...)."""
        return cls(f"--{role}-creds", authfile, f"{role}-")


SOURCE_FLAGS = CredentialFlags.of_role("src")
DEST_FLAGS = CredentialFlags.of_role("dest")


def parse_creds(text: str) -> Credentials:
    """`USER[:PASS]` as `--creds` takes it; the password may itself contain `:`."""
    username, sep, password = text.partition(":")
    if not username:
        raise UsageError("invalid --creds: expected USER:PASS with a non-empty user")
    if not sep:
        raise UsageError("invalid --creds: expected USER:PASS (no ':' found)")
    return Credentials(username, password)


def _normalize_registry(registry: str) -> str:
    if registry in ("registry-1.docker.io", "docker.io"):
        return "index.docker.io"
    return registry


def _normalize_key(key: str, legacy: bool) -> str:
    stripped = key.removeprefix("http://").removeprefix("https://")
    if legacy or stripped != key:
        stripped = stripped.split("/", 1)[0]
    return _normalize_registry(stripped)


@dataclass(frozen=True)
class _AuthFile:
    path: Path
    legacy: bool = False


def auth_file_paths(authfile: str | None = None) -> list[_AuthFile]:
    """The files to search, in order (skopeo's `getAuthFilePaths`)."""
    explicit = authfile or os.environ.get("REGISTRY_AUTH_FILE")
    if explicit:
        return [_AuthFile(Path(explicit))]
    home = Path(os.environ.get("HOME") or Path.home())
    paths: list[_AuthFile] = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        paths.append(_AuthFile(Path(runtime) / "containers" / "auth.json"))
    else:
        paths.append(_AuthFile(Path(f"/run/containers/{os.getuid()}/auth.json")))
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    paths.append(_AuthFile(Path(config_home) / "containers" / "auth.json"))
    docker_config = os.environ.get("DOCKER_CONFIG")
    if docker_config:
        paths.append(_AuthFile(Path(docker_config) / "config.json"))
    else:
        paths.append(_AuthFile(home / ".docker" / "config.json"))
    paths.append(_AuthFile(home / ".dockercfg", legacy=True))
    return paths


def _load(file: _AuthFile) -> dict[str, Any] | None:
    try:
        raw = file.path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", file.path, exc.strerror or exc)
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise UsageError(f"credentials file {file.path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise UsageError(f"credentials file {file.path} is not a JSON object")
    if file.legacy:
        return {"auths": data}
    return data


def _lookup_keys(key: str, registry: str, legacy: bool) -> Iterator[str]:
    """`quay.io/org/repo`, `quay.io/org`, `quay.io`: most specific first."""
    if legacy:
        yield registry
        return
    while True:
        yield key
        if "/" not in key:
            return
        key = key.rsplit("/", 1)[0]


def _decode_entry(path: Path, key: str, entry: Any) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    identity = entry.get("identitytoken") or None
    auth = entry.get("auth") or ""
    username = entry.get("username")
    password = entry.get("password")
    if not auth and isinstance(username, str) and isinstance(password, str):
        return Credentials(username, password, identity)  # podman also accepts these fields
    try:
        decoded = base64.b64decode(auth, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        log.warning("ignoring the malformed 'auth' field for %s in %s", key, path)
        return None
    user, sep, secret = decoded.partition(":")
    if not sep:
        if decoded:
            log.warning("ignoring the 'auth' field for %s in %s: no ':'", key, path)
        if identity:
            return Credentials("", "", identity)
        return None  # `{}` entries mark a credential helper
    return Credentials(user, secret.strip("\x00"), identity)


def _helper_server(registry: str) -> str:
    """The server name docker-compatible helpers store an entry under."""
    return DOCKER_HUB_AUTH_KEY if registry == DOCKER_HUB else registry


def run_credential_helper(helper: str, server: str) -> Credentials | None:
    """`docker-credential-<helper> get`, server URL on stdin, JSON on stdout; no shell."""
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        log.warning(
            "credential helper %s is not installed; continuing without credentials", program
        )
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning(
            "credential helper %s failed (%s); continuing without credentials",
            program,
            type(exc).__name__,
        )
        return None
    out = proc.stdout.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        if "credentials not found" in out.lower():
            return None
        # Never log the helper's output: it may hold a secret.
        log.warning(
            "credential helper %s exited with %d; continuing without credentials",
            program,
            proc.returncode,
        )
        return None
    try:
        data = json.loads(out)
        username, secret = str(data.get("Username") or ""), str(data.get("Secret") or "")
    except (ValueError, AttributeError):
        log.warning("credential helper %s printed something that is not JSON", program)
        return None
    if not username and not secret:
        return None
    if username == _TOKEN_USERNAME:
        return Credentials("", "", secret)
    return Credentials(username, secret)


def _find_in_file(file: _AuthFile, key: str, registry: str) -> Credentials | None:
    data = _load(file)
    if data is None:
        return None
    helpers = data.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for name in dict.fromkeys([registry, _helper_server(registry)]):
            helper = helpers.get(name)
            if isinstance(helper, str) and helper:
                return run_credential_helper(helper, _helper_server(registry))
    auths = data.get("auths") or {}
    if isinstance(auths, dict):
        for candidate in _lookup_keys(key, registry, file.legacy):
            if candidate in auths:
                found = _decode_entry(file.path, candidate, auths[candidate])
                if found is not None:
                    return found
                break
        wanted = _normalize_registry(registry)
        for name, entry in auths.items():
            if isinstance(name, str) and _normalize_key(name, file.legacy) == wanted:
                found = _decode_entry(file.path, name, entry)
                if found is not None:
                    return found
    store = data.get("credsStore")
    if isinstance(store, str) and store:
        return run_credential_helper(store, _helper_server(registry))
    return None


def find_credentials(
    registry: str, repository: str | None = None, *, authfile: str | None = None
) -> Credentials | None:
    """Credentials for `registry` (as `Reference.registry` spells it) and optionally a repository.

    None means anonymous. A helper that is missing or fails is logged and treated as "no
    credentials", so public images still pull.
    """
    registry = DOCKER_HUB if _normalize_registry(registry) == "index.docker.io" else registry
    key = f"{registry}/{repository}" if repository else registry
    for file in auth_file_paths(authfile):
        found = _find_in_file(file, key, registry)
        if found is not None:
            log.debug("credentials for %s from %s", key, file.path)
            return found
    return None

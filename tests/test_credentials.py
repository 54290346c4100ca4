"""Credential lookup in skopeo's order, with real files and real helper executables."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from pipeline.errors import UsageError
from pipeline.registry.credentials import (
    Credentials,
    auth_file_paths,
    find_credentials,
    parse_creds,
)


def auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home with every location variable pointing inside it."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return home


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def helper(home: Path, name: str, script: str) -> Path:
    """A `docker-credential-<name>` executable on PATH."""
    path = home.parent / "bin" / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_parse_creds() -> None:
    assert parse_creds("u:p:with:colons") == Credentials("u", "p:with:colons")
    assert parse_creds("u:") == Credentials("u", "")
    for bad in ("nopass", ":p", ""):
        with pytest.raises(UsageError):
            parse_creds(bad)


def test_repr_hides_secrets() -> None:
    creds = Credentials("alice", "hunter2", identity_token="tok-abc")
    for text in (repr(creds), str(creds), repr([creds]), f"{creds}"):
        assert "hunter2" not in text and "tok-abc" not in text
        assert "alice" in text


def test_nothing_found(home: Path) -> None:
    assert find_credentials("quay.io", "org/repo") is None


def test_search_order(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = write(
        tmp_path / "run" / "containers" / "auth.json", {"auths": {"r.io": auth("runtime", "1")}}
    )
    config = write(
        home / ".config" / "containers" / "auth.json", {"auths": {"r.io": auth("config", "2")}}
    )
    docker = write(home / ".docker" / "config.json", {"auths": {"r.io": auth("docker", "3")}})
    write(home / ".dockercfg", {"r.io": auth("legacy", "4")})
    assert find_credentials("r.io").username == "runtime"  # type: ignore[union-attr]
    runtime.unlink()
    assert find_credentials("r.io").username == "config"  # type: ignore[union-attr]
    config.unlink()
    assert find_credentials("r.io").username == "docker"  # type: ignore[union-attr]
    docker.unlink()
    assert find_credentials("r.io").username == "legacy"  # type: ignore[union-attr]


def test_docker_config_env_and_xdg_config_home(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(home / ".docker" / "config.json", {"auths": {"r.io": auth("home", "1")}})
    write(tmp_path / "dc" / "config.json", {"auths": {"r.io": auth("dockerconfig", "2")}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    assert find_credentials("r.io").username == "dockerconfig"  # type: ignore[union-attr]
    write(tmp_path / "xdg" / "containers" / "auth.json", {"auths": {"r.io": auth("xdg", "3")}})
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert find_credentials("r.io").username == "xdg"  # type: ignore[union-attr]


def test_explicit_authfile_replaces_the_defaults(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(home / ".docker" / "config.json", {"auths": {"r.io": auth("home", "1")}})
    flag = write(tmp_path / "flag.json", {"auths": {"r.io": auth("flag", "2")}})
    env = write(tmp_path / "env.json", {"auths": {"other.io": auth("env", "3")}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(env))
    assert find_credentials("r.io") is None  # $REGISTRY_AUTH_FILE has no entry: no fallback
    assert find_credentials("other.io").username == "env"  # type: ignore[union-attr]
    assert find_credentials("r.io", authfile=str(flag)).username == "flag"  # type: ignore[union-attr]
    assert [p.path for p in auth_file_paths(str(flag))] == [flag]


def test_most_specific_namespace_wins(home: Path) -> None:
    write(
        home / ".config" / "containers" / "auth.json",
        {
            "auths": {
                "quay.io": auth("registry", "1"),
                "quay.io/org": auth("org", "2"),
                "quay.io/org/team/app": auth("repo", "3"),
            }
        },
    )
    assert find_credentials("quay.io", "org/team/app").username == "repo"  # type: ignore[union-attr]
    assert find_credentials("quay.io", "org/team/other").username == "org"  # type: ignore[union-attr]
    assert find_credentials("quay.io", "elsewhere/x").username == "registry"  # type: ignore[union-attr]
    assert find_credentials("quay.io").username == "registry"  # type: ignore[union-attr]


def test_docker_hub_url_key_and_normalised_keys(home: Path) -> None:
    write(
        home / ".docker" / "config.json",
        {
            "auths": {
                "https://index.docker.io/v1/": auth("hub", "1"),
                "https://registry.example.com/v2/": auth("url", "2"),
            }
        },
    )
    assert find_credentials("docker.io", "library/nginx").username == "hub"  # type: ignore[union-attr]
    assert find_credentials("registry.example.com", "a/b").username == "url"  # type: ignore[union-attr]


def test_identity_token_and_password_with_colons(home: Path) -> None:
    entry = auth("user", "pa:ss\x00") | {"identitytoken": "refresh-xyz"}
    write(
        home / ".docker" / "config.json",
        {"auths": {"r.io": entry, "t.io": {"identitytoken": "only"}}},
    )
    found = find_credentials("r.io")
    assert found == Credentials("user", "pa:ss", "refresh-xyz")
    assert find_credentials("t.io") == Credentials("", "", "only")


def test_malformed_entries_are_skipped(home: Path) -> None:
    write(
        home / ".docker" / "config.json",
        {
            "auths": {
                "a.io": {"auth": "!!notbase64"},
                "b.io": {"auth": base64.b64encode(b"nocolon").decode()},
                "c.io": {},
            }
        },
    )
    for host in ("a.io", "b.io", "c.io"):
        assert find_credentials(host) is None


def test_malformed_file_is_a_usage_error(home: Path) -> None:
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"config\.json is not valid JSON"):
        find_credentials("r.io")


def test_cred_helper_runs_without_a_shell(home: Path) -> None:
    log = home / "helper.log"
    helper(
        home,
        "fake",
        f'echo "$@" > {log}\ncat >> {log}\n'
        'echo \'{"ServerURL":"r.io","Username":"helped","Secret":"from-helper"}\'\n',
    )
    write(
        home / ".docker" / "config.json",
        {"auths": {"r.io": auth("file", "x")}, "credHelpers": {"r.io": "fake"}},
    )
    assert find_credentials("r.io", "a/b") == Credentials("helped", "from-helper")
    assert log.read_text().splitlines() == ["get", "r.io"]


def test_creds_store_with_token_username(home: Path) -> None:
    log = home / "store.log"
    helper(home, "store", f'cat > {log}\necho \'{{"Username":"<token>","Secret":"idtok"}}\'\n')
    write(
        home / ".docker" / "config.json",
        {"auths": {"https://index.docker.io/v1/": {}}, "credsStore": "store"},
    )
    assert find_credentials("docker.io", "library/nginx") == Credentials("", "", "idtok")
    assert log.read_text() == "https://index.docker.io/v1/"


def test_helper_not_found_or_failing_means_anonymous(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(
        home / ".docker" / "config.json",
        {"credHelpers": {"a.io": "missing", "b.io": "broken", "c.io": "none"}},
    )
    helper(home, "broken", "echo 'secret-ish output' >&2\necho leaked-secret\nexit 3\n")
    helper(home, "none", "echo 'credentials not found in native keychain'\nexit 1\n")
    assert find_credentials("a.io") is None
    assert find_credentials("b.io") is None
    assert find_credentials("c.io") is None
    assert "docker-credential-missing is not installed" in caplog.text
    assert "leaked-secret" not in caplog.text

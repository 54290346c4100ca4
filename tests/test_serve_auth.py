"""Who may read through `bale serve`'s `/v2/` and catalog: the htpasswd file (bcrypt, re-read
when it changes), bearer tokens, anonymous read only when asked."""

from __future__ import annotations

import base64
import os

import bcrypt
import pytest

from pipeline.errors import UsageError
from pipeline.serve.registry_auth import Authenticator, RegistryAuth


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def entry(user: str, password: str, prefix: str = "$2y$") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{prefix}{hashed[4:]}\n"


def test_nothing_configured_lets_everyone_read():
    auth = Authenticator(RegistryAuth())
    assert auth.allows(None)
    assert auth.allows(basic("anyone", "x"))  # a stale login does not break anonymous pulls


def test_htpasswd_users_and_a_file_that_changes(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text(entry("ann", "pw1") + "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    auth = Authenticator(RegistryAuth.from_files(htpasswd=path))
    assert not auth.allows(None)
    assert auth.allows(basic("ann", "pw1"))
    assert auth.allows(basic("ann", "pw1"))  # remembered: no second bcrypt
    assert not auth.allows(basic("ann", "pw2"))
    assert not auth.allows(basic("bob", "password"))  # not bcrypt: skipped, as distribution does
    assert not auth.allows("Basic !!notbase64")
    assert not auth.allows("Bearer whatever")
    path.write_text(entry("carl", "pw3", "$2b$"))  # accounts change without a restart
    os.utime(path, ns=(1, 1))  # a new stamp even within the file system's time resolution
    assert auth.allows(basic("carl", "pw3"))
    assert not auth.allows(basic("ann", "pw1"))


def test_tokens_and_anonymous_read(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-1\n\ntok-2\n")
    auth = Authenticator(RegistryAuth.from_files(token_file=tokens))
    assert auth.allows("Bearer tok-2") and not auth.allows("Bearer tok-3")
    assert not auth.allows(None)
    assert auth.config.challenge().startswith('Bearer realm="bale"')
    open_auth = Authenticator(RegistryAuth.from_files(token_file=tokens, anonymous_read=True))
    assert open_auth.allows(None)
    assert not open_auth.allows("Bearer tok-3")  # a wrong credential is still wrong


def test_bad_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        RegistryAuth.from_files(htpasswd=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UsageError, match="holds no token"):
        RegistryAuth.from_files(token_file=tmp_path / "empty")

"""No secret in any output: every password, token and key used is grepped for in everything bale
wrote, for runs built to make it talk a lot.

Registries of their own (htpasswd with a random password; token auth whose issuer records every
token it signs), reached through fault proxies so that retries, resumes and re-authentication
all happen; every run at `-vv` (where botocore and urllib3 once printed a session token and
presigned URL queries: their loggers now stay at WARNING), with `--report`,
`--junit` and both `--log-format`s; credentials from `--src-creds`/`--dest-creds`/`--creds`, a
spec file, an auth file (base64 `auth`, an OAuth2 `identitytoken`); wrong passwords too; S3 keys
from the environment. The secrets looked for: each password (raw, URL-encoded), each
`user:password` in base64, each token and refresh token issued (whole and its signature), the
identity token, the AWS secret key and session token.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.bed.cli import isolated_env, run_bale, show
from tests.bed.images import ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.proxy import DropAfter, FaultProxy, Respond
from tests.bed.registry import RegistryServer
from tests.bed.token_issuer import TokenIssuer

pytestmark = pytest.mark.integration

AWS_SECRET = "bale-aws-secret-" + secrets.token_hex(12)
AWS_SESSION = "bale-aws-session-" + secrets.token_hex(12)
WRONG_PASSWORD = "bale-wrong-" + secrets.token_hex(8)


@dataclass
class Bed:
    htpasswd: RegistryServer
    token: RegistryServer
    issuer: TokenIssuer
    tokens: list[str]
    identity_token: str
    blobs: list[str]
    big: str
    """The 1.5 MB layer."""
    image_repo: str = "secrets/app"
    outputs: list[tuple[str, str]] = field(default_factory=list)
    """(what, text) of everything any run wrote."""

    def secrets(self) -> dict[str, str]:
        """name -> secret string, for everything that must never be printed."""
        out: dict[str, str] = {}
        for name, server in (("htpasswd", self.htpasswd), ("token", self.token)):
            user, password = str(server.username), str(server.password)
            out[f"{name} password"] = password
            out[f"{name} password (url-encoded)"] = urllib.parse.quote(password, safe="")
            out[f"{name} basic"] = base64.b64encode(f"{user}:{password}".encode()).decode()
        out["wrong password"] = WRONG_PASSWORD
        out["identity token"] = self.identity_token
        for i, token in enumerate(self.tokens):
            out[f"token {i}"] = token
            out[f"token {i} signature"] = token.rsplit(".", 1)[1]
        for i, token in enumerate(self.issuer.refresh_tokens):
            out[f"refresh token {i}"] = token
        out["aws secret key"] = AWS_SECRET
        out["aws session token"] = AWS_SESSION
        return out


@pytest.fixture(scope="module")
def bed(make_registry: Any, registry: RegistryServer, image_factory: ImageFactory) -> Bed:
    issuer: TokenIssuer = make_registry.token_issuer(lifetime=60)
    tokens: list[str] = []
    sign = issuer.make_token

    def recording(*args: Any, **kwargs: Any) -> tuple[str, Any]:
        token, granted = sign(*args, **kwargs)
        tokens.append(token)
        return token, granted

    issuer.make_token = recording  # type: ignore[method-assign]
    identity = "bale-identity-" + secrets.token_urlsafe(18)
    issuer.refresh_tokens[identity] = issuer.username
    htpasswd = make_registry("htpasswd")
    token = make_registry("token", token_issuer=issuer)
    image = image_factory.image(
        layers=(LayerSpec(3000, seed=7701), LayerSpec(1_500_000, "none", seed=7702))
    )
    for server in (htpasswd, token, registry):
        image_factory.push(image, f"{server.host}/secrets/app:1", server)
    blobs = [d.digest for d in image.blobs]
    return Bed(htpasswd, token, issuer, tokens, identity, blobs, image.layers[1].digest)


def arm(proxy: FaultProxy, bed: Bed) -> None:
    """Faults that make bale retry (503, 429) and resume the big layer (a dropped connection)."""
    proxy.add(Respond(path="/manifests/", status=503, headers={"Retry-After": "0"}))
    proxy.add(DropAfter(method="GET", path=f"/blobs/{bed.big}$", after=400_000))
    proxy.add(Respond(path="/blobs/", status=429, headers={"Retry-After": "0"}))


@pytest.fixture
def faulty(bed: Bed) -> Iterator[dict[str, FaultProxy]]:
    """A proxy in front of each registry, armed with `arm`."""
    with FaultProxy(bed.htpasswd.host) as ht, FaultProxy(bed.token.host) as tok:
        arm(ht, bed)
        arm(tok, bed)
        yield {"htpasswd": ht, "token": tok}


_runs = itertools.count(1)


def run(
    bed: Bed, tmp_path: Path, *args: str, env: dict[str, str] | None = None, keep: bool = True
) -> Any:
    """Run bale with -vv and a JSON report and JUnit file where the command takes them; keep
    every output for the final grep (unless `keep` is false) and grep it now."""
    n = next(_runs)
    report, junit = tmp_path / f"report-{n}.json", tmp_path / f"junit-{n}.xml"
    command = args[1] if args[0].startswith("--log-format") else args[0]
    extra: list[str] = []
    if command in ("archive", "run", "restore"):
        extra = ["--report", str(report), "--junit", str(junit)]
    env = env or isolated_env(tmp_path, **MOTO_KEYS)
    proc: subprocess.CompletedProcess[str] = run_bale("-vv", *args, *extra, env=env)
    texts = [
        (f"run {n} {args[:2]} stdout", proc.stdout),
        (f"run {n} {args[:2]} stderr", proc.stderr),
    ]
    for path in (report, junit):
        if path.exists():
            texts.append((f"run {n} {path.name}", path.read_text()))
    if keep:
        bed.outputs.extend(texts)
    assert_clean(bed, texts)
    return proc


def assert_clean(bed: Bed, texts: list[tuple[str, str]]) -> None:
    found = [
        f"{name} in {what}"
        for what, text in texts
        for name, secret in bed.secrets().items()
        if secret and secret in text
    ]
    assert not found, found


def test_archive_with_creds_retries_and_failures_leaks_nothing(
    bed: Bed, faulty: dict[str, FaultProxy], tmp_path: Path
) -> None:
    for kind, server in (("htpasswd", bed.htpasswd), ("token", bed.token)):
        host = faulty[kind].host
        for log_format in ("text", "json"):
            faulty[kind].clear()
            arm(faulty[kind], bed)
            proc = run(
                bed,
                tmp_path,
                f"--log-format={log_format}",
                "archive",
                f"docker://{host}/{bed.image_repo}:1",
                f"docker://{host}/{bed.image_repo}:missing",
                "--to",
                str(tmp_path / f"store-{kind}-{log_format}"),
                "--src-tls-verify=false",
                "--src-creds",
                str(server.creds),
            )
            assert proc.returncode == 1, show(proc)  # the missing tag; the other archived
            assert "resuming" in proc.stderr and "retrying" in proc.stderr, show(proc)
    assert len(bed.tokens) >= 2  # tokens were really issued (and are now grepped for)


def test_wrong_passwords_leak_nothing(bed: Bed, tmp_path: Path) -> None:
    for server in (bed.htpasswd, bed.token):
        proc = run(
            bed,
            tmp_path,
            "archive",
            f"docker://{server.host}/{bed.image_repo}:1",
            "--to",
            str(tmp_path / "store"),
            "--src-tls-verify=false",
            "--src-creds",
            f"{server.username}:{WRONG_PASSWORD}",
        )
        assert proc.returncode == 1, show(proc)
        assert "401" in proc.stdout or "unauthorized" in proc.stdout.lower(), show(proc)


def test_spec_credentials_leak_nothing(bed: Bed, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    lines = []
    for server in (bed.htpasswd, bed.token):
        lines += [
            f"{server.host}:",
            "  images:",
            f"    {bed.image_repo}: ['1', 'missing']",
            f"  credentials: {{username: {server.username}, password: '{server.password}'}}",
            "  tls-verify: false",
        ]
    spec.write_text("\n".join(lines) + "\n")
    for log_format in ("text", "json"):
        proc = run(
            bed,
            tmp_path,
            f"--log-format={log_format}",
            "run",
            str(spec),
            "--to",
            str(tmp_path / f"store-{log_format}"),
        )
        assert proc.returncode == 1, show(proc)
    proc = run(bed, tmp_path, "run", str(spec), "--to", str(tmp_path / "dry"), "--dry-run")
    assert proc.returncode in (0, 1), show(proc)


def test_auth_file_credentials_and_identity_token_leak_nothing(bed: Bed, tmp_path: Path) -> None:
    basic = base64.b64encode(f"{bed.htpasswd.username}:{bed.htpasswd.password}".encode()).decode()
    authfile = tmp_path / "auth.json"
    authfile.write_text(
        json.dumps(
            {
                "auths": {
                    bed.htpasswd.host: {"auth": basic},
                    bed.token.host: {
                        "auth": base64.b64encode(b"<token>:").decode(),
                        "identitytoken": bed.identity_token,
                    },
                }
            }
        )
    )
    grants_before = bed.issuer.count(grant="refresh_token")
    for server in (bed.htpasswd, bed.token):
        proc = run(
            bed,
            tmp_path,
            "archive",
            f"docker://{server.host}/{bed.image_repo}:1",
            "--to",
            str(tmp_path / "store"),
            "--src-tls-verify=false",
            "--authfile",
            str(authfile),
        )
        assert proc.returncode == 0, show(proc)
    assert bed.issuer.count(grant="refresh_token") > grants_before  # the identity token was used


def test_inspect_list_tags_copy_and_restore_leak_nothing(
    bed: Bed, faulty: dict[str, FaultProxy], tmp_path: Path
) -> None:
    token_host = faulty["token"].host
    ref = f"docker://{token_host}/{bed.image_repo}:1"
    creds = str(bed.token.creds)
    for args in (
        ("inspect", "--tls-verify=false", "--creds", creds, ref),
        ("inspect", "--raw", "--tls-verify=false", "--creds", creds, ref),
        (
            "list-tags",
            "--tls-verify=false",
            "--creds",
            creds,
            f"docker://{token_host}/{bed.image_repo}",
        ),
        ("inspect", "--tls-verify=false", "--creds", f"{bed.token.username}:{WRONG_PASSWORD}", ref),
    ):
        run(bed, tmp_path, *args)
    # Registry to registry, both sides authenticated (pull with a token, push with Basic).
    proc = run(
        bed,
        tmp_path,
        "copy",
        ref,
        f"docker://{bed.htpasswd.host}/secrets/copied:1",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        creds,
        "--dest-creds",
        str(bed.htpasswd.creds),
    )
    assert proc.returncode == 0, show(proc)
    store = tmp_path / "store"
    proc = run(
        bed,
        tmp_path,
        "archive",
        ref,
        "--to",
        str(store),
        "--src-tls-verify=false",
        "--src-creds",
        creds,
    )
    assert proc.returncode == 0, show(proc)
    for dest_creds in (str(bed.token.creds), f"{bed.token.username}:{WRONG_PASSWORD}"):
        run(
            bed,
            tmp_path,
            "restore",
            f"{token_host}/{bed.image_repo}:1",
            f"docker://{bed.token.host}/secrets/restored:1",
            "--from",
            str(store),
            "--dest-tls-verify=false",
            "--dest-creds",
            dest_creds,
        )


def test_s3_keys_leak_nothing(bed: Bed, moto_server: MotoServer, tmp_path: Path) -> None:
    """At DEBUG botocore logs every request it signs, session token included; -vv must not
    let it (moto accepts any keys)."""
    env = isolated_env(
        tmp_path,
        **MOTO_KEYS | {"AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_SESSION_TOKEN": AWS_SESSION},
    )
    url = f"s3://{moto_server.create_bucket()}/arch"
    endpoint = ["--endpoint-url", moto_server.endpoint_url]
    source = f"docker://{bed.htpasswd.host}/{bed.image_repo}:1"
    creds = ["--src-tls-verify=false", "--src-creds", str(bed.htpasswd.creds)]
    commands: list[tuple[str, ...]] = [
        ("archive", source, "--to", url, *endpoint, *creds),
        ("verify", url, *endpoint),
        ("gc", url, "--dry-run", *endpoint),
        ("ls", url, *endpoint),
    ]
    for args in commands:
        proc = run(bed, tmp_path, *args, env=env, keep=False)
        assert proc.returncode == 0, show(proc)


def test_presigned_redirect_query_leaks_nothing(
    bed: Bed, registry: RegistryServer, tmp_path: Path
) -> None:
    """The registry redirects each blob GET to storage by a presigned URL (as registries
    backed by S3 do); the query string is a bearer credential for the object and must not be
    logged. Storage here is the anonymous registry holding the same image, on another origin."""
    signature = "bale-presigned-" + secrets.token_hex(12)
    query = f"X-Amz-Security-Token={AWS_SESSION}&X-Amz-Signature={signature}"
    with FaultProxy(bed.htpasswd.host) as front, FaultProxy(registry.host) as storage:
        for digest in bed.blobs:
            path = f"/v2/{bed.image_repo}/blobs/{digest}"
            front.add(
                Respond(
                    method="GET",
                    path=path + "$",
                    status=307,
                    headers={"Location": f"http://localhost:{storage.port}{path}?{query}"},
                )
            )
        proc = run(
            bed,
            tmp_path,
            "archive",
            f"docker://{front.host}/{bed.image_repo}:1",
            "--to",
            str(tmp_path / "store"),
            "--src-tls-verify=false",
            "--src-creds",
            str(bed.htpasswd.creds),
            keep=False,
        )
        assert proc.returncode == 0, show(proc)
        assert len(storage.find("GET", "/blobs/")) == len(bed.blobs)
        assert signature not in proc.stdout + proc.stderr, "presigned signature in the log"


def test_every_output_of_the_module_is_clean(bed: Bed) -> None:
    """Once more over everything, with the tokens issued by the end (a token issued by a later
    run must not have been printed by an earlier one either)."""
    assert len(bed.outputs) >= 20
    assert_clean(bed, bed.outputs)

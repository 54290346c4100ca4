"""What the user reads, through the real `bale` command: credential hints that name the
command's own options, wrong vs missing credentials, --help with defaults, BALE_* variables and
examples, `--log-format json` on every line, and `copy` refusing to overwrite a tar or to write
one to a terminal."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import click
import pytest

from pipeline.archive import layout
from pipeline.cli import main
from tests.bed.cli import isolated_env, run_bale, show
from tests.bed.fixtures_registry import RegistryFactory
from tests.bed.images import ImageFactory
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.registry import RegistryServer
from tests.bed.terminal import stdout_on_terminal

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pushed(registries: dict[str, RegistryServer], image_factory: ImageFactory) -> dict[str, str]:
    """One small image in each of the shared registries, as `docker://HOST/REPO:TAG`."""
    image = image_factory.image()
    out = {}
    for mode, server in registries.items():
        image_factory.push(image, "messages/app:1", server)
        out[mode] = f"docker://{server.host}/messages/app:1"
    return out


@pytest.fixture(scope="module")
def archived(pushed: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local archive holding the anonymous registry's image."""
    root = tmp_path_factory.mktemp("archived")
    store = root / "store"
    proc = run_bale(
        "archive",
        pushed["none"],
        "--to",
        str(store),
        "--src-tls-verify=false",
        env=isolated_env(root, **MOTO_KEYS),
    )
    assert proc.returncode == 0, show(proc)
    return store


def image_of(ref: str) -> str:
    return ref.removeprefix("docker://")


# ---- credentials: the command's own option, wrong vs missing -----------------------------------


def assert_no_blob_digest(proc: subprocess.CompletedProcess[str]) -> None:
    """A refusal names the image, never a blob (`repo@sha256:...` of a config or layer)."""
    assert "@sha256:" not in proc.stdout + proc.stderr, show(proc)


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_archive_wrong_password_reads_as_refused(
    mode: str, registries: dict[str, RegistryServer], pushed: dict[str, str], tmp_path: Path
) -> None:
    server = registries[mode]
    secret = "not-the-password-31415"
    proc = run_bale(
        "archive",
        pushed[mode],
        "--to",
        str(tmp_path / "store"),
        "--src-tls-verify=false",
        "--src-creds",
        f"{server.username}:{secret}",
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )
    assert proc.returncode == 1, show(proc)
    line = f"failed    {image_of(pushed[mode])}: the registry refused these credentials for "
    assert line + f"{server.host} (HTTP 401, user {server.username})" in proc.stdout, show(proc)
    assert "requires credentials" not in proc.stdout + proc.stderr
    assert secret not in proc.stdout + proc.stderr
    assert_no_blob_digest(proc)


def test_archive_without_credentials_names_src_creds(
    htpasswd_registry: RegistryServer, pushed: dict[str, str], tmp_path: Path
) -> None:
    proc = run_bale(
        "archive",
        pushed["htpasswd"],
        "--to",
        str(tmp_path / "store"),
        "--src-tls-verify=false",
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )
    assert proc.returncode == 1, show(proc)
    host = htpasswd_registry.host
    expected = (
        f"failed    {image_of(pushed['htpasswd'])}: {host} requires credentials: "
        f"give --src-creds USER:PASS or log in with `podman login {host}`"
    )
    assert expected in proc.stdout, show(proc)
    assert "refused these credentials" not in proc.stdout + proc.stderr
    assert "--dest-creds" not in proc.stdout + proc.stderr
    assert_no_blob_digest(proc)


def restore_into(
    host: str, repo: str, archived: Path, pushed: dict[str, str], tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`bale restore` of the archived image into `host/repo:1`."""
    return run_bale(
        "restore",
        image_of(pushed["none"]),
        f"docker://{host}/{repo}:1",
        "--from",
        str(archived),
        "--dest-tls-verify=false",
        *extra,
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_restore_without_credentials_names_dest_creds(
    mode: str,
    registries: dict[str, RegistryServer],
    archived: Path,
    pushed: dict[str, str],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    """The first request of a restore is a blob HEAD: its refusal used to name the config
    blob (`host/repo@sha256:...`) and `--creds`, an option restore does not have."""
    host = registries[mode].host
    proc = restore_into(host, unique_repo, archived, pushed, tmp_path)
    assert proc.returncode == 1, show(proc)
    expected = (
        f"failed    {image_of(pushed['none'])}: {host} requires credentials: "
        "give --dest-creds USER:PASS"
    )
    assert expected in proc.stderr, show(proc)
    assert "--src-creds" not in proc.stderr and "--creds " not in proc.stderr
    assert_no_blob_digest(proc)


def test_restore_wrong_password_reads_as_refused(
    htpasswd_registry: RegistryServer,
    archived: Path,
    pushed: dict[str, str],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    host = htpasswd_registry.host
    wrong = f"{htpasswd_registry.username}:wrong-password"
    proc = restore_into(host, unique_repo, archived, pushed, tmp_path, "--dest-creds", wrong)
    assert proc.returncode == 1, show(proc)
    assert f"the registry refused these credentials for {host}" in proc.stderr, show(proc)
    assert "wrong-password" not in proc.stdout + proc.stderr
    assert_no_blob_digest(proc)


def test_copy_names_the_images_and_dest_creds(
    htpasswd_registry: RegistryServer, pushed: dict[str, str], unique_repo: str, tmp_path: Path
) -> None:
    host = htpasswd_registry.host
    dest = f"docker://{host}/{unique_repo}:1"
    proc = run_bale(
        "copy",
        pushed["none"],
        dest,
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )
    assert proc.returncode == 1, show(proc)
    assert proc.stderr.startswith(
        f"bale: error: {pushed['none']} -> {dest}: {host} requires credentials: "
        "give --dest-creds USER:PASS"
    ), show(proc)
    assert_no_blob_digest(proc)


def test_sync_names_src_creds_and_src_authfile(
    htpasswd_registry: RegistryServer,
    registry: RegistryServer,
    pushed: dict[str, str],
    tmp_path: Path,
) -> None:
    proc = run_bale(
        "sync",
        pushed["htpasswd"],
        f"docker://{registry.host}/messages-sync",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )
    assert proc.returncode == 1, show(proc)
    assert "give --src-creds USER:PASS" in proc.stderr, show(proc)
    assert "--src-authfile FILE" in proc.stderr, show(proc)


def test_inspect_names_creds(
    htpasswd_registry: RegistryServer, pushed: dict[str, str], tmp_path: Path
) -> None:
    proc = run_bale(
        "inspect", pushed["htpasswd"], "--tls-verify=false", env=isolated_env(tmp_path, **MOTO_KEYS)
    )
    assert proc.returncode == 1, show(proc)
    host = htpasswd_registry.host
    assert proc.stderr == (
        f"bale: error: {pushed['htpasswd']}: {host} requires credentials: give --creds USER:PASS "
        "or log in with "
        f"`podman login {host}` or `docker login {host}` (--authfile FILE for another auth file)\n"
    ), show(proc)


# ---- --help: defaults, BALE_* variables, examples, what --platform does -------------------------


def help_of(*command: str) -> str:
    with tempfile.TemporaryDirectory(prefix="bale-help-") as scratch:
        env = isolated_env(Path(scratch), COLUMNS="200")
        proc = run_bale(*command, "--help", env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return re.sub(r"\s+", " ", proc.stdout)


COMMANDS = sorted(main.commands)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_env_vars_defaults_and_examples(command: str) -> None:
    args = [command] if command else []
    text = help_of(*args)
    cmd = main.commands[command] if command else main
    for param in cmd.params:
        if not isinstance(param, click.Option) or param.name in ("help", "version"):
            continue
        assert f"[env var: {param.envvar}" in text, (command, param.name)
        assert str(param.envvar).startswith("BALE_")
    examples = text.split("Examples:", 1)[1]
    assert 2 <= examples.count(" bale ") <= 3, examples


def test_help_shows_the_defaults() -> None:
    text = help_of("archive")
    assert "[env var: BALE_JOBS; default: 4; x>=1]" in text
    assert "[env var: BALE_RETRIES; default: 5; x>=0]" in text
    assert "default: keep-going" in text


def test_env_var_is_read(tmp_path: Path) -> None:
    """The variable the help names is the one bale reads."""
    proc = run_bale(
        "archive",
        "x/y:1",
        "--to",
        str(tmp_path),
        env=isolated_env(tmp_path, **MOTO_KEYS, BALE_JOBS="0"),
    )
    assert proc.returncode == 2 and "--jobs" in proc.stderr, show(proc)


def test_platform_help_says_what_is_kept() -> None:
    archive = help_of("archive")
    assert "an index is stored whole (every platform, and the index itself" in archive
    assert "the tar holds linux/amd64, else the index's first image" in archive
    assert (
        "only that platform is stored, under its own manifest digest (the index is not kept)"
        in archive
    )
    assert "the tar holds linux/amd64" in help_of("run")
    copy = help_of("copy")
    assert "to docker:// an index is copied whole (every platform, digest kept)" in copy
    assert "to a tar only linux/amd64" in copy
    sync = help_of("sync")
    assert "Without it that is linux/amd64" in sync and "With --all the whole index" in sync
    assert "goes back as it was archived" in help_of("restore")


# ---- --log-format json: every line -------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, object]]:
    """Every non-empty line as JSON (fails on the first plain line)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def results(text: str) -> list[dict[str, object]]:
    return [r for r in json_lines(text) if r["event"] == "result"]


def test_json_archive_and_restore_lines(
    registry: RegistryServer, pushed: dict[str, str], unique_repo: str, tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, **MOTO_KEYS)
    store = tmp_path / "store"
    image = image_of(pushed["none"])
    proc = run_bale(
        "--log-format", "json", "-vv", "archive", pushed["none"], "--to", str(store),
        "--src-tls-verify=false", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, show(proc)
    (result,) = results(proc.stdout)
    assert result["status"] == "archived" and result["image"] == image
    assert str(result["digest"]).startswith("sha256:") and result["destination"]
    logs = [r for r in json_lines(proc.stderr) if r["event"] == "log"]
    assert logs and all(r["level"] == "debug" for r in logs)

    dest = f"docker://{registry.host}/{unique_repo}:1"
    proc = run_bale(
        "--log-format", "json", "restore", image, dest, "--from", str(store),
        "--dest-tls-verify=false", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, show(proc)
    (result,) = results(proc.stdout)
    assert (result["status"], result["image"], result["destination"]) == ("restored", image, dest)
    json_lines(proc.stderr)

    proc = run_bale(
        "--log-format", "json", "sync", pushed["none"], f"docker://{registry.host}/{unique_repo}",
        "--src-tls-verify=false", "--dest-tls-verify=false", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, show(proc)
    (result,) = results(proc.stdout)
    assert result["status"] in ("synced", "copied", "skipped") and result["image"] == image
    json_lines(proc.stderr)


def test_json_failures_and_errors(
    htpasswd_registry: RegistryServer,
    archived: Path,
    pushed: dict[str, str],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    env = isolated_env(tmp_path, **MOTO_KEYS)
    image = image_of(pushed["none"])
    dest = f"docker://{htpasswd_registry.host}/{unique_repo}:1"
    proc = run_bale(
        "--log-format", "json", "restore", image, dest, "--from", str(archived),
        "--dest-tls-verify=false", env=env,
    )  # fmt: skip
    assert proc.returncode == 1, show(proc)
    assert json_lines(proc.stdout) == []
    (failed,) = results(proc.stderr)
    assert failed["status"] == "failed" and "give --dest-creds" in str(failed["error"])

    proc = run_bale("--log-format", "json", "copy", pushed["none"], dest, "--src-tls-verify=false",
                "--dest-tls-verify=false", env=env)  # fmt: skip
    (error,) = json_lines(proc.stderr)
    assert proc.returncode == 1 and error["event"] == "error" and error["exit_code"] == 1
    assert str(error["message"]).startswith(f"{pushed['none']} -> {dest}: ")

    proc = run_bale("--log-format", "json", "archive", "x/y:1", "--to", str(tmp_path), "--jobs", "0",
                env=env)  # fmt: skip
    (error,) = json_lines(proc.stderr)
    assert proc.returncode == 2 and error["exit_code"] == 2 and "--jobs" in str(error["message"])


def test_json_copy_line(pushed: dict[str, str], tmp_path: Path) -> None:
    tar = tmp_path / "app.tar"
    proc = run_bale("--log-format", "json", "copy", pushed["none"], f"docker-archive:{tar}",
                "--src-tls-verify=false", env=isolated_env(tmp_path, **MOTO_KEYS))  # fmt: skip
    assert proc.returncode == 0, show(proc)
    (result,) = results(proc.stderr)
    assert result["status"] == "copied" and result["destination"] == f"docker-archive:{tar}"
    assert result["bytes"] == tar.stat().st_size


# ---- copy: an existing tar, a tar to a terminal ------------------------------------------------


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_copy_refuses_an_existing_tar_unless_force(
    fmt: str, registry: RegistryServer, pushed: dict[str, str], tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, **MOTO_KEYS)
    tar = tmp_path / "app.tar"
    tar.write_bytes(b"precious")
    mark = registry.mark()
    proc = run_bale("copy", pushed["none"], f"{fmt}:{tar}", "--src-tls-verify=false", env=env)
    assert proc.returncode == 2, show(proc)
    assert proc.stderr == f"bale: error: {tar} already exists: give --force to replace it\n"
    assert tar.read_bytes() == b"precious"
    assert registry.count(since=mark) == 0  # refused before the source was read
    proc = run_bale("copy", pushed["none"], f"{fmt}:{tar}", "--src-tls-verify=false", "--force",
                env=env)  # fmt: skip
    assert proc.returncode == 0, show(proc)
    assert tar.stat().st_size > 1024


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_copy_refuses_a_tar_to_a_terminal(
    fmt: str, registry: RegistryServer, pushed: dict[str, str], tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, **MOTO_KEYS)
    mark = registry.mark()
    code, seen, stderr = stdout_on_terminal(
        "copy", pushed["none"], f"{fmt}:-", "--src-tls-verify=false", env=env
    )
    assert code == 2, stderr
    assert stderr == "bale: error: refusing to write a tar to a terminal; redirect stdout\n"
    assert seen == b""
    assert registry.count(since=mark) == 0
    # Redirected, the same command writes the tar.
    proc = run_bale(
        "copy", pushed["none"], f"{fmt}:-", "--src-tls-verify=false", env=env, timeout=120,
        text=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) > 1024


def test_json_verify_and_gc_lines(pushed: dict[str, str], tmp_path: Path) -> None:
    """gc of an unreferenced blob, then verify of a corrupt blob: their lines and both
    summaries are JSON."""
    env = isolated_env(tmp_path, **MOTO_KEYS)
    store = tmp_path / "store"
    proc = run_bale(
        "archive", pushed["none"], "--to", str(store), "--src-tls-verify=false", env=env
    )
    assert proc.returncode == 0, show(proc)
    stray = b"nobody refers to me"
    key = layout.blob_key("sha256:" + hashlib.sha256(stray).hexdigest())
    (store / key).parent.mkdir(parents=True)
    (store / key).write_bytes(stray)

    proc = run_bale("--log-format", "json", "gc", str(store), "--dry-run", "--older-than", "0s",
                env=env)  # fmt: skip
    assert proc.returncode == 0, show(proc)
    (line,) = json_lines(proc.stdout)
    assert (line["event"], line["action"], line["kind"], line["key"]) == (
        "gc", "would remove", "blob", key
    )  # fmt: skip
    (summary,) = json_lines(proc.stderr)
    assert summary["event"] == "summary"

    (store / key).write_bytes(b"not what it was")
    proc = run_bale("--log-format", "json", "verify", str(store), env=env)
    assert proc.returncode == 1, show(proc)
    faults = json_lines(proc.stdout)
    assert [f["key"] for f in faults if f["event"] == "fault"] == [key], faults
    (summary,) = json_lines(proc.stderr)
    assert summary["event"] == "summary" and summary["ok"] is False


def test_copy_refuses_an_existing_tar_in_s3(
    pushed: dict[str, str], moto_server: MotoServer, s3_bucket: str, tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=moto_server.endpoint_url)
    s3 = moto_server.client()
    s3.put_object(Bucket=s3_bucket, Key="tars/app.tar", Body=b"precious")
    dest = f"oci-archive:s3://{s3_bucket}/tars/app.tar"
    proc = run_bale("copy", pushed["none"], dest, "--src-tls-verify=false", env=env)
    assert proc.returncode == 2, show(proc)
    assert "already exists: give --force" in proc.stderr
    assert s3.get_object(Bucket=s3_bucket, Key="tars/app.tar")["Body"].read() == b"precious"
    proc = run_bale("copy", pushed["none"], dest, "--src-tls-verify=false", "--force", env=env)
    assert proc.returncode == 0, show(proc)
    assert s3.head_object(Bucket=s3_bucket, Key="tars/app.tar")["ContentLength"] > 1024


def test_restore_without_push_access_reads_as_denied(
    make_registry: RegistryFactory,
    archived: Path,
    pushed: dict[str, str],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    """Right password, no push right (the token service grants pull only): neither "refused
    these credentials" nor "requires credentials", but the user and the missing scope."""

    def pull_only(account: str | None, kind: str, name: str, actions: Any) -> list[str]:
        return [a for a in actions if a == "pull"]

    server = make_registry("token", issuer_options={"policy": pull_only})
    proc = restore_into(
        server.host, unique_repo, archived, pushed, tmp_path, "--dest-creds", str(server.creds)
    )
    assert proc.returncode == 1, show(proc)
    expected = (
        f"{server.host} denied user {server.username} access: "
        f"repository:{unique_repo}:pull,push not granted"
    )
    assert expected in proc.stderr, show(proc)
    assert "refused these credentials" not in proc.stderr
    assert "requires credentials" not in proc.stderr
    assert_no_blob_digest(proc)

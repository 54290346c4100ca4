"""Store problems are found once, before the first image, through the real CLI.

A missing bucket, missing or refused credentials, keys that may read but not write, an OSS
endpoint without keys, an endpoint nobody answers on, a local directory that cannot be written:
each ends the command with exit 2 and one line that says which it is, whatever the number of
images, and nothing is written. Also here: a destination that is a URL without its colon, and
what success lines and reports name (the full destination; with --platform the stored digest).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.bed.cli import error_line, isolated_env, run_bale, show
from tests.bed.fixtures_store import OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_REGION
from tests.bed.images import ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS, REGION, MotoServer, free_port, start_moto_server
from tests.bed.oss_server import OssServer
from tests.bed.registry import RegistryServer
from tests.bed.store_view import local_keys

pytestmark = pytest.mark.integration

IMAGES = ["127.0.0.1:9/team/a:1", "127.0.0.1:9/team/b:1", "127.0.0.1:9/team/c:1"]
"""Three images on a registry that is not there: a store check that did not run first would
show up as three per-image failures (exit 1), not one line."""


def one_line(proc: subprocess.CompletedProcess[str], *says: str) -> str:
    """The run ended up front: exit 2, one `bale: error:` line saying all of `says`, no
    per-image output."""
    assert proc.returncode == 2, show(proc)
    line = error_line(proc)
    for text in says:
        assert text in line, show(proc)
    assert proc.stdout == "", show(proc)
    return line


# ---- S3 (moto_server) ----------------------------------------------------------------------


def s3_names(moto: MotoServer, bucket: str) -> tuple[list[str], list[str]]:
    """Every object and every open upload in `bucket`, as the server lists them."""
    client = moto.client()
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return objects, uploads


def store_commands(url: str, tmp_path: Path, *extra: str) -> list[list[str]]:
    """Every command that reads or writes a store, pointed at `url`."""
    return [
        ["archive", *IMAGES, "--to", url, *extra],
        ["restore", "127.0.0.1:9/team/a:1", "docker://127.0.0.1:9/x:1", "--from", url, *extra],
        ["ls", url, *extra],
        ["verify", url, *extra],
        ["gc", url, *extra],
        ["inspect", "--from", url, "127.0.0.1:9/team/a:1", *extra],
        ["copy", "docker://127.0.0.1:9/team/a:1", f"docker-archive:{url}/a.tar", *extra],
        ["copy", f"docker-archive:{url}/a.tar", f"docker-archive:{tmp_path}/a.tar", *extra],
    ]


def test_s3_bucket_that_does_not_exist_is_one_line_for_every_command(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, **MOTO_KEYS)
    before = {b["Name"] for b in moto_server.client().list_buckets()["Buckets"]}
    url = "s3://no-such-bucket-13/arch"
    for args in store_commands(url, tmp_path, "--endpoint-url", moto_server.endpoint_url):
        proc = run_bale(*args, env=env)
        one_line(proc, "bucket no-such-bucket-13 does not exist", moto_server.endpoint_url)
    after = {b["Name"] for b in moto_server.client().list_buckets()["Buckets"]}
    assert after == before  # not created behind the user's back
    assert not (tmp_path / "a.tar").exists()


def test_s3_endpoint_that_nobody_answers(tmp_path: Path) -> None:
    """Said at once: not after every backoff of --retries, with a warning line for each."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    proc = run_bale(
        "archive", *IMAGES, "--to", "s3://bucket/arch", "--endpoint-url", endpoint,
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )  # fmt: skip
    one_line(proc, f"endpoint {endpoint} unreachable (connection refused)")


def test_s3_without_credentials(moto_server: MotoServer, s3_bucket: str, tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION=REGION,
    )
    url = f"s3://{s3_bucket}/arch"
    for args in (["archive", *IMAGES, "--to", url], ["ls", url]):
        proc = run_bale(*args, "--endpoint-url", moto_server.endpoint_url, env=env)
        one_line(proc, "no S3 credentials", "AWS_ACCESS_KEY_ID")
    assert s3_names(moto_server, s3_bucket) == ([], [])


@dataclass
class IamMoto:
    """A moto_server that checks signatures and IAM policies, with one bucket and three keys:
    `admin` may do anything, `reader` may list and read, `nobody` may do nothing."""

    server: MotoServer
    bucket: str
    keys: dict[str, tuple[str, str]]

    def env(self, tmp_path: Path, who: str, secret: str | None = None) -> dict[str, str]:
        key, real_secret = self.keys[who]
        return isolated_env(
            tmp_path,
            AWS_ACCESS_KEY_ID=key,
            AWS_SECRET_ACCESS_KEY=real_secret if secret is None else secret,
            AWS_ENDPOINT_URL=self.server.endpoint_url,
            AWS_DEFAULT_REGION=REGION,
        )

    def names(self) -> tuple[list[str], list[str]]:
        import boto3

        key, secret = self.keys["admin"]
        client = boto3.session.Session(
            aws_access_key_id=key, aws_secret_access_key=secret, region_name=REGION
        ).client("s3", endpoint_url=self.server.endpoint_url)
        objects = client.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        uploads = client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [o["Key"] for o in objects], [u["Key"] for u in uploads]


@pytest.fixture(scope="module")
def iam_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IamMoto]:
    import boto3

    policies = {
        "admin": ["s3:*"],
        "reader": ["s3:List*", "s3:Get*", "s3:Head*"],
        "nobody": [],
    }
    # The set-up calls below are the ones moto lets through unsigned: 1 + 3 per user.
    server = start_moto_server(
        tmp_path_factory.mktemp("iam-moto"), no_auth_actions=1 + 3 * len(policies)
    )
    try:
        session = boto3.session.Session(
            aws_access_key_id="setup", aws_secret_access_key="setup", region_name=REGION
        )
        bucket = f"bale-{uuid.uuid4().hex[:12]}"
        session.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=bucket)
        iam = session.client("iam", endpoint_url=server.endpoint_url)
        keys = {}
        for user, actions in policies.items():
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
            statement = {"Effect": "Allow", "Action": actions or ["sqs:ListQueues"]}
            document = {"Version": "2012-10-17", "Statement": [{**statement, "Resource": "*"}]}
            iam.put_user_policy(
                UserName=user, PolicyName="bale", PolicyDocument=json.dumps(document)
            )
        yield IamMoto(server, bucket, keys)
    finally:
        server.stop()


def test_s3_credentials_refused(iam_moto: IamMoto, tmp_path: Path) -> None:
    url = f"s3://{iam_moto.bucket}/arch"
    env = iam_moto.env(tmp_path, "admin", secret="not-the-secret")
    for args in (["archive", *IMAGES, "--to", url], ["ls", url]):
        one_line(run_bale(*args, env=env), "S3 refused these credentials", "SignatureDoesNotMatch")
    env["AWS_ACCESS_KEY_ID"] = "AKIANOSUCHKEY0000000"
    one_line(run_bale("ls", url, env=env), "refused these credentials", "InvalidAccessKeyId")
    assert iam_moto.names() == ([], [])


def test_s3_keys_that_may_read_but_not_write(iam_moto: IamMoto, tmp_path: Path) -> None:
    url = f"s3://{iam_moto.bucket}/arch"
    env = iam_moto.env(tmp_path, "reader")
    proc = run_bale("archive", *IMAGES, "--to", url, env=env)
    one_line(proc, url, "access denied for writing")
    proc = run_bale("copy", "docker://127.0.0.1:9/team/a:1", f"docker-archive:{url}/a.tar", env=env)
    one_line(proc, "access denied for writing")
    assert iam_moto.names() == ([], [])
    # Reading is what these keys may do: ls, verify and a dry run pass the check.
    proc = run_bale("ls", url, env=env)
    assert proc.returncode == 0, show(proc)
    proc = run_bale("archive", IMAGES[0], "--to", url, "--dry-run", "--retries", "0", env=env)
    assert proc.returncode == 1 and "denied" not in proc.stderr, show(proc)  # the image fails


def test_s3_keys_without_any_permission(iam_moto: IamMoto, tmp_path: Path) -> None:
    url = f"s3://{iam_moto.bucket}/arch"
    proc = run_bale("ls", url, env=iam_moto.env(tmp_path, "nobody"))
    one_line(proc, "access denied for reading")


def test_s3_write_check_leaves_nothing_behind(
    moto_server: MotoServer, s3_bucket: str, tmp_path: Path
) -> None:
    """A run whose store passes the check but whose images all fail leaves the bucket as it
    was: no probe object, no open upload."""
    url = f"s3://{s3_bucket}/arch"
    proc = run_bale(
        "archive", IMAGES[0], "--to", url, "--endpoint-url", moto_server.endpoint_url,
        "--retries", "0", env=isolated_env(tmp_path, **MOTO_KEYS),
    )  # fmt: skip
    assert proc.returncode == 1, show(proc)  # the image's registry is not there
    assert s3_names(moto_server, s3_bucket) == ([], [])


def test_ceph_rgw_problems_and_a_check_that_leaves_nothing(rgw_server: Any, tmp_path: Path) -> None:
    """A real S3 server that checks every signature: the same lines as on moto."""
    bucket = rgw_server.create_bucket()
    url = f"s3://{bucket}/arch"
    env = isolated_env(
        tmp_path,
        AWS_ACCESS_KEY_ID=rgw_server.access_key,
        AWS_SECRET_ACCESS_KEY=rgw_server.secret_key,
        AWS_ENDPOINT_URL=rgw_server.endpoint_url,
        AWS_DEFAULT_REGION=REGION,
    )
    proc = run_bale("archive", *IMAGES, "--to", "s3://no-such-bucket-13/arch", env=env)
    one_line(proc, "bucket no-such-bucket-13 does not exist")
    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    one_line(run_bale("archive", *IMAGES, "--to", url, env=wrong), "SignatureDoesNotMatch")
    unknown = {**env, "AWS_ACCESS_KEY_ID": "NOSUCHKEY"}
    one_line(run_bale("ls", url, env=unknown), "InvalidAccessKeyId")
    proc = run_bale("archive", IMAGES[0], "--to", url, "--retries", "0", env=env)
    assert proc.returncode == 1, show(proc)  # past the check; the image's registry is not there
    client = rgw_server.client()
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# ---- OSS (the OSS protocol server) ---------------------------------------------------------


def oss_env(tmp_path: Path, server: OssServer, **keys: str) -> dict[str, str]:
    extra = {"OSS_ENDPOINT": server.endpoint, "OSS_REGION": OSS_REGION}
    extra.update(keys)
    return isolated_env(tmp_path, **MOTO_KEYS, **extra)


def with_keys(key_id: str = OSS_ACCESS_KEY_ID) -> dict[str, str]:
    return {"OSS_ACCESS_KEY_ID": key_id, "OSS_ACCESS_KEY_SECRET": OSS_ACCESS_KEY_SECRET}


@pytest.fixture
def oss_bucket_once(oss_server: OssServer) -> Iterator[str]:
    bucket = oss_server.create_bucket()
    yield bucket
    oss_server.drop_bucket(bucket)


def test_oss_endpoint_without_keys(
    oss_server: OssServer, oss_bucket_once: str, tmp_path: Path
) -> None:
    env = oss_env(tmp_path, oss_server)
    url = f"oss://{oss_bucket_once}/arch"
    for args in store_commands(url, tmp_path):
        line = one_line(run_bale(*args, env=env), f"OSS endpoint {oss_server.endpoint}")
        assert "without keys" in line and "OSS_ACCESS_KEY_ID" in line, line
    assert oss_server.objects(oss_bucket_once) == {} and oss_server.uploads(oss_bucket_once) == []


def test_oss_problems(oss_server: OssServer, oss_bucket_once: str, tmp_path: Path) -> None:
    url = f"oss://{oss_bucket_once}/arch"
    env = oss_env(tmp_path, oss_server, **with_keys())
    proc = run_bale("archive", *IMAGES, "--to", "oss://no-such-bucket-13/arch", env=env)
    one_line(proc, "bucket no-such-bucket-13 does not exist")

    wrong = oss_env(tmp_path, oss_server, **with_keys("not-our-key"))
    one_line(run_bale("archive", *IMAGES, "--to", url, env=wrong), "refused", "InvalidAccessKeyId")

    oss_server.deny_writes(oss_bucket_once)
    one_line(run_bale("archive", *IMAGES, "--to", url, env=env), "access denied for writing")
    proc = run_bale("ls", url, env=env)
    assert proc.returncode == 0, show(proc)
    oss_server.deny(oss_bucket_once)
    one_line(run_bale("verify", url, env=env), "access denied for reading")
    assert oss_server.objects(oss_bucket_once) == {} and oss_server.uploads(oss_bucket_once) == []


def test_oss_endpoint_that_nobody_answers(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = isolated_env(
        tmp_path, **MOTO_KEYS, OSS_ENDPOINT=endpoint, OSS_REGION=OSS_REGION, **with_keys()
    )
    proc = run_bale("archive", *IMAGES, "--to", "oss://bucket/arch", env=env)
    one_line(proc, f"endpoint {endpoint} unreachable (connection refused)")


# ---- local directories ---------------------------------------------------------------------


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """`directory` made unwritable: by its mode, or for root (whom modes do not stop) by the
    immutable attribute."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is not possible")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_local_directory_that_cannot_be_written(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    env = isolated_env(tmp_path, **MOTO_KEYS)
    with unwritable(root):
        for target in (root, root / "deeper"):
            proc = run_bale("archive", *IMAGES, "--to", str(target), env=env)
            one_line(proc, f"cannot write to {target}", "permission denied")
        proc = run_bale(
            "copy", "docker://127.0.0.1:9/team/a:1", f"docker-archive:{root}/a.tar", env=env
        )
        one_line(proc, f"cannot write to {root}")
        assert run_bale("ls", str(root), env=env).returncode == 0  # reading it is fine
    assert not local_keys(root) and not list(root.iterdir())


def test_local_store_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    proc = run_bale(
        "archive", *IMAGES, "--to", str(blocker / "store"), env=isolated_env(tmp_path, **MOTO_KEYS)
    )
    one_line(proc, "a file is in the way")
    assert blocker.read_text() == "not a directory"


# ---- mistyped destinations -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "meant"),
    [
        (["archive", *IMAGES, "--to", "s3//bucket/x"], "s3://bucket/x"),
        (["archive", *IMAGES, "--to", "oss//bucket"], "oss://bucket"),
        (["run", "{dir}/spec.yaml", "--to", "S3//bucket/x"], "s3://bucket/x"),
        (["ls", "gs//bucket/x"], "gs://bucket/x"),
        (["verify", "file//srv/archive"], "file:///srv/archive"),
        (["restore", "h.io/a:1", "docker://h.io/b:1", "--from", "s3//b/p"], "s3://b/p"),
        (["copy", "docker://h.io/a:1", "docker-archive:s3//b/k.tar"], "s3://b/k.tar"),
        (["copy", "oci-archive:https//h/k.tar", "docker://h.io/a:1"], "https://h/k.tar"),
    ],
)
def test_url_without_its_colon_is_refused(args: list[str], meant: str, tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text("127.0.0.1:9:\n  images:\n    team/a: ['1']\n")
    env = isolated_env(tmp_path, **MOTO_KEYS)
    proc = run_bale(
        *(a.replace("{dir}", str(tmp_path)) for a in args), env=env, cwd=tmp_path, timeout=120
    )
    one_line(proc, f"did you mean {meant}?")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli-home", "spec.yaml"], show(proc)


def test_a_local_path_that_says_so_is_allowed(tmp_path: Path) -> None:
    proc = run_bale(
        "archive", "--dry-run", IMAGES[0], "--to", "./s3//x", "--retries", "0",
        env=isolated_env(tmp_path, **MOTO_KEYS), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "did you mean" not in proc.stderr, show(proc)


# ---- what success lines and reports name ---------------------------------------------------


@pytest.fixture(scope="module")
def multi(registry: RegistryServer, image_factory: ImageFactory) -> Any:
    index = image_factory.index(
        ("linux/amd64", "linux/arm64"), layers=(LayerSpec(4000, seed=1301),)
    )
    return image_factory.push(index, f"{registry.host}/check/multi:1", registry)


def test_success_lines_and_report_name_the_full_destination(
    registry: RegistryServer, multi: Any, moto_server: MotoServer, s3_bucket: str, tmp_path: Path
) -> None:
    ref = f"{registry.host}/check/multi:1"
    tar = f"images/{registry.host.replace(':', '-')}/check/multi/1.tar"
    for url, where in (
        (f"s3://{s3_bucket}/team/arch", f"s3://{s3_bucket}/team/arch/{tar}"),
        (str(tmp_path / "store"), str(tmp_path / "store" / tar)),
    ):
        report = tmp_path / "r.json"
        proc = run_bale(
            "archive", ref, "--to", url, "--src-tls-verify=false", "--report", str(report),
            "--endpoint-url", moto_server.endpoint_url, env=isolated_env(tmp_path, **MOTO_KEYS),
        )  # fmt: skip
        assert proc.returncode == 0, show(proc)
        assert proc.stdout.split() == ["archived", ref, multi.digest, "->", where], show(proc)
        (result,) = json.loads(report.read_text())["images"]
        assert result["destination"] == where
        assert result["tar_key"] == tar
        assert result["source_digest"] is None  # the index itself was stored
    restored = f"{registry.host}/check/restored:1"
    proc = run_bale(
        "restore", ref, f"docker://{restored}", "--from", str(tmp_path / "store"),
        "--dest-tls-verify=false", "--report", str(report), env=isolated_env(tmp_path, **MOTO_KEYS),
    )  # fmt: skip
    assert proc.returncode == 0, show(proc)
    (result,) = json.loads(report.read_text())["images"]
    assert result["destination"] == f"docker://{restored}"
    copied = tmp_path / "out" / "a.tar"
    copied.parent.mkdir()
    proc = run_bale(
        "copy", f"docker://{ref}", "docker-archive:out/a.tar", "--src-tls-verify=false",
        env=isolated_env(tmp_path, **MOTO_KEYS), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, show(proc)
    assert f"-> docker-archive:{copied} (" in proc.stderr, show(proc)


def test_platform_of_an_index_reports_what_was_stored(
    registry: RegistryServer, multi: Any, tmp_path: Path
) -> None:
    """`--platform linux/arm64` stores that platform's manifest (not the index): stdout, the
    report, the JUnit file, the record, `ls` and a rerun all name the arm64 manifest's digest;
    the index's digest is in the report as `source_digest`."""
    ref = f"{registry.host}/check/multi:1"
    arm64 = multi.child("linux/arm64").digest
    root = tmp_path / "store"
    report, junit = tmp_path / "r.json", tmp_path / "j.xml"
    args = ["archive", ref, "--to", str(root), "--platform", "linux/arm64"]
    args += ["--src-tls-verify=false", "--report", str(report), "--junit", str(junit)]
    proc = run_bale(*args, env=isolated_env(tmp_path, **MOTO_KEYS))
    assert proc.returncode == 0, show(proc)
    assert proc.stdout.split()[:3] == ["archived", ref, arm64], show(proc)
    (result,) = json.loads(report.read_text())["images"]
    assert (result["digest"], result["source_digest"]) == (arm64, multi.digest)
    assert f"digest={arm64} source_digest={multi.digest}" in junit.read_text()
    listed = json.loads(
        run_bale("ls", str(root), "--json", env=isolated_env(tmp_path, **MOTO_KEYS)).stdout
    )
    assert [r["digest"] for r in listed] == [arm64]

    again = run_bale(
        *args, env=isolated_env(tmp_path, **MOTO_KEYS)
    )  # the same platform is already there
    assert again.returncode == 0, show(again)
    assert again.stdout.split()[:3] == ["skipped", ref, arm64], show(again)

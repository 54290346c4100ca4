"""The catalog and the read-only registry as a real server, for tests: `python -m tests.bed.serve_web`.

    python -m tests.bed.serve_web --store URL --port N [--htpasswd FILE] [--token-file FILE]
        [--anonymous-read] [--max-age SECONDS]

A Starlette app of `catalog_routes` and `registry_routes` (sharing one `CatalogIndex`) under
uvicorn on 127.0.0.1. The store is opened with `open_store` from the environment, as the CLI
would (`AWS_*`, `OSS_*`). `start_serve_web(...)` starts it as a subprocess and waits until
`/v2/` answers; `ServeWeb.stop()` ends it; `request(server, method, path)` asks it one thing; `serving([(store, extra), ...], ...)` starts several and
stops them all. `push_sample`, `archive_sample` and `archive_everywhere` make the archives the
serve tests read.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.oci import Descriptor
from pipeline.refs import Reference
from tests.bed.artifacts import attach, sign
from tests.bed.cli import isolated_env, run_bale
from tests.bed.fixtures_store import OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_REGION
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec, Skopeo
from tests.bed.moto import MOTO_KEYS, MotoServer, _die_with_parent, free_port, stop_process
from tests.bed.oss_server import OssServer
from tests.bed.registry import RegistryServer


@dataclass
class ServeWeb:
    url: str
    host: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, headers keyed in lower case."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    server: ServeWeb, method: str, path: str, headers: dict[str, str] | None = None
) -> Answer:
    """`method path` to the server, the body read whole; redirects are not followed."""
    conn = http.client.HTTPConnection(server.host, timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)


def start_serve_web(
    store: str,
    workdir: Path,
    *,
    env: dict[str, str],
    extra: tuple[str, ...] = (),
    timeout: float = 30.0,
) -> ServeWeb:
    port = free_port()
    log_path = workdir / f"serve-web-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bed.serve_web",
                "--store",
                store,
                "--port",
                str(port),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            preexec_fn=_die_with_parent,
        )
    host = f"127.0.0.1:{port}"
    server = ServeWeb(f"http://{host}", host, process, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"serve_web exited: {server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/", timeout=2):
                return server
        except urllib.error.HTTPError:  # 401 with auth on: it is up
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"serve_web did not start: {server.log()[-3000:]}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def serving(
    specs: list[tuple[str, tuple[str, ...]]], workdir: Path, *, env: dict[str, str]
) -> Iterator[list[ServeWeb]]:
    """One server per `(store, extra args)`, all stopped on leaving (also when one fails to
    start)."""
    servers: list[ServeWeb] = []
    try:
        for store, extra in specs:
            servers.append(start_serve_web(store, workdir, env=env, extra=extra))
        yield servers
    finally:
        for server in servers:
            server.stop()


def main() -> None:
    import uvicorn
    from starlette.applications import Starlette

    from pipeline.serve.catalog import catalog_routes
    from pipeline.serve.catalog_index import CatalogIndex
    from pipeline.serve.registry_api import registry_routes
    from pipeline.serve.registry_auth import RegistryAuth
    from pipeline.store.url import open_store

    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--htpasswd")
    parser.add_argument("--token-file")
    parser.add_argument("--anonymous-read", action="store_true")
    parser.add_argument("--max-age", type=float, default=2.0)
    args = parser.parse_args()
    store = open_store(args.store, check="read")
    auth = RegistryAuth.from_files(
        htpasswd=args.htpasswd, token_file=args.token_file, anonymous_read=args.anonymous_read
    )
    index = CatalogIndex(store, max_age=args.max_age)
    index.warm()
    app = Starlette(
        routes=[
            *registry_routes(store, auth, index=index),
            *catalog_routes(store, index=index, auth=auth),
        ]
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()


# ---- what the serve tests archive ------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """Images pushed to a bed registry for the serve tests: a signed, attested Docker schema2
    image with an SBOM referring to it, and a two-platform OCI index."""

    registry_host: str
    app: BuiltImage
    multi: BuiltImage
    signature: Descriptor
    attestation: Descriptor
    sbom: Descriptor

    @property
    def sources(self) -> list[str]:
        return [f"docker://{self.app.reference}", f"docker://{self.multi.reference}"]

    def store_repo(self, image: BuiltImage) -> str:
        assert image.repository is not None
        return Reference.parse(image.repository).store_repo


def push_sample(
    registry: RegistryServer, image_factory: ImageFactory, skopeo: Skopeo, tmp: Path, prefix: str
) -> Sample:
    app = image_factory.push(
        image_factory.image(
            layers=(LayerSpec(1_500_000, seed=9101), LayerSpec(40_000, seed=9102)),
            format="docker",
        ),
        f"{prefix}/app:v1",
        registry,
    )
    multi = image_factory.push(
        image_factory.index(layers=(LayerSpec(20_000, seed=9103),)), f"{prefix}/multi:v2", registry
    )
    repo = f"{prefix}/app"
    signature = sign(skopeo, tmp, registry, repo, app.digest)
    attestation = sign(skopeo, tmp, registry, repo, app.digest, ".att")
    sbom = attach(skopeo, tmp, registry, repo, app.descriptor, b'{"spdxVersion":"SPDX-2.3"}')
    return Sample(registry.host, app, multi, signature, attestation, sbom)


@dataclass(frozen=True)
class SampleStores:
    """Where `archive_everywhere` put the sample, and the environment that reaches them."""

    env: dict[str, str]
    local: Path
    s3: str
    oss: str | None


def archive_everywhere(
    sample: Sample, tmp: Path, moto_server: MotoServer, oss_server: OssServer | None = None
) -> SampleStores:
    """The sample archived into a local directory, a moto bucket and, given its server, an OSS
    bucket (each under the prefix `team`)."""
    keys = dict(MOTO_KEYS, AWS_ENDPOINT_URL=moto_server.endpoint_url)
    if oss_server is not None:
        keys.update(
            OSS_ENDPOINT=oss_server.endpoint,
            OSS_ACCESS_KEY_ID=OSS_ACCESS_KEY_ID,
            OSS_ACCESS_KEY_SECRET=OSS_ACCESS_KEY_SECRET,
            OSS_REGION=OSS_REGION,
        )
    env = isolated_env(tmp, **keys)
    local = tmp / "archive"
    archive_sample(sample, str(local), env)
    s3 = f"s3://{moto_server.create_bucket()}/team"
    archive_sample(sample, s3, env)
    oss = None
    if oss_server is not None:
        oss = f"oss://{oss_server.create_bucket()}/team"
        archive_sample(sample, oss, env)
    return SampleStores(env, local, s3, oss)


def archive_sample(sample: Sample, store: str, env: dict[str, str]) -> None:
    """`bale archive` both images (referrers travel along, the default) into `store`."""
    run_bale(
        "archive", *sample.sources, "--to", store, "--src-tls-verify=false", env=env, check=True
    )

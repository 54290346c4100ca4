"""The cases of issue 8, each a set of contenders run alternately on the same servers.

a. `bale archive` to S3 vs `skopeo copy docker://… docker-archive:FILE` + boto3 upload of FILE
   (and again with the registry link shaped to the store's write rate);
b. `bale copy docker://… docker-archive:FILE` vs `skopeo copy` to the same;
c. `bale sync` vs `skopeo sync` between two local registries (when bale has `sync`);
d. a second image sharing its base layers with an archived one: bytes on the wire vs new bytes;
e. the limits: plain GET, plain boto3 PUT, SHA-256 on one core;
m. memory and disk: peak RSS of `bale archive` for a 4 GiB and a 256 MiB image, temp disk;
r. parallel ranged download on a long link (latency and a per-connection window);
q. requests per image at the registry and at the store (issue 19);
s. start-up of `bale --version` and `bale --help`, and the imports that dominate it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import memprofile, requestcount
from bench.bed import BALE, Bed, Pushed
from bench.config import Config, Shape
from bench.measure import Sample, run
from bench.relay import Relay
from tests.bed.proxy import FaultProxy
from tests.bed.registry import RegistryServer

Contender = Callable[[], Sample]


@dataclass
class Result:
    case: str
    shape: str
    contender: str
    payload: int
    """Bytes of the image (every blob and manifest)."""
    samples: list[Sample] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "shape": self.shape,
            "contender": self.contender,
            "payload": self.payload,
            "info": self.info,
            "samples": [
                {
                    "seconds": s.seconds,
                    "peak_rss": s.peak_rss,
                    "tmp_peak": s.tmp_peak,
                    "tmp_after": s.tmp_after,
                    "steps": s.steps,
                    "extra": s.extra,
                }
                for s in self.samples
            ],
        }


def bale_available(bed: Bed, command: str) -> bool:
    out = subprocess.run(
        [*BALE, "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=bed.s3_env(),
        cwd=bed.workdir,
    ).stdout
    return any(line.split()[:1] == [command] for line in out.splitlines())


class Bench:
    def __init__(self, bed: Bed, cfg: Config, log: Callable[[str], None]) -> None:
        self.bed = bed
        self.cfg = cfg
        self.log = log
        self.results: list[Result] = []
        self.images: dict[str, Pushed] = {}
        self.out = bed.workdir / "out"
        self.out.mkdir(exist_ok=True)
        self._n = 0
        self.cwd = bed.workdir
        """Where contenders run: not the repository, so `python -m pipeline` imports the
        measured tree from PYTHONPATH and not the work tree from the current directory."""
        self.put_rate: float | None = None
        """Bytes/s of the plain boto3 PUT to the S3 server (case e, big shape), for case a shaped."""
        self.sha_rate: float | None = None

    # ---- plumbing ----------------------------------------------------------------------

    def image(self, shape: Shape, extra: tuple[Any, ...] = (), name: str | None = None) -> Pushed:
        name = name or shape.key.lower()
        if name not in self.images:
            started = time.monotonic()
            self.images[name] = self.bed.push(name, (*shape.layers, *extra))
            self.log(f"  built and pushed {name} ({time.monotonic() - started:.0f}s)")
        return self.images[name]

    def alternate(
        self, case: str, shape: str, payload: int, contenders: dict[str, Contender], runs: int
    ) -> list[Result]:
        """Run each contender `runs` times, rotating the order every round."""
        results = {name: Result(case, shape, name, payload) for name in contenders}
        names = list(contenders)
        for i in range(runs):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                sample = contenders[name]()
                results[name].samples.append(sample)
                self.log(
                    f"  {case} {shape} run {i + 1}/{runs} {name}: {sample.seconds:.2f}s "
                    f"rss {sample.peak_rss / 2**20:.0f} MiB"
                )
        self.results.extend(results.values())
        return list(results.values())

    def _next(self) -> int:
        self._n += 1
        return self._n

    @contextmanager
    def _bucket(self) -> Iterator[str]:
        bucket = self.bed.new_bucket()
        try:
            yield bucket
        finally:
            self.bed.drop_bucket(bucket)

    @staticmethod
    def _settle(*paths: Path) -> None:
        """Remove outputs and flush dirty pages outside the timed region, so a run does not
        pay for the previous run's writeback."""
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        os.sync()

    # ---- contenders --------------------------------------------------------------------

    def bale_archive(
        self,
        pushed: Pushed,
        host: str | None = None,
        store_endpoint: str | None = None,
        code: Path | None = None,
        cmd: list[str] | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> Sample:
        """`cmd`: what runs bale (default `python -m pipeline`; a profiler's wrapper);
        `env_extra`: variables added to its environment."""
        n = self._next()
        tmp = self.bed.tmpdir("bale-archive")
        report = self.out / f"report-{n}.json"
        ref = _with_host(pushed.ref, host)
        with self._bucket() as bucket:
            cmd = [
                *(cmd or BALE),
                "archive",
                f"docker://{ref}",
                "--to",
                f"s3://{bucket}/archive",
                "--src-tls-verify=false",
                "--jobs",
                str(self.cfg.jobs),
                "--report",
                str(report),
            ]
            env = {**self.bed.s3_env(store_endpoint, code), **(env_extra or {})}
            sample = run(cmd, env=env, tmpdir=tmp, cwd=self.cwd)
        data = json.loads(report.read_text())
        image = data["images"][0]
        if image["status"] != "archived":
            raise RuntimeError(f"bale archive {ref}: {image['status']} {image.get('error')}")
        sample.extra.update(
            downloaded=image["bytes_downloaded"],
            uploaded=image["bytes_uploaded"],
            copied=image["bytes_copied_server_side"],
            disk=sample.tmp_peak,
        )
        self._settle(report, tmp)
        return sample

    def skopeo_then_upload(self, pushed: Pushed, host: str | None = None) -> Sample:
        n = self._next()
        tmp = self.bed.tmpdir("skopeo")
        tar = self.out / f"skopeo-{n}.tar"
        ref = _with_host(pushed.ref, host)
        first = run(
            self.bed.skopeo_cmd(
                tmp, "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                f"docker-archive:{tar}",
            ),
            env=self.bed.skopeo_env(),
            tmpdir=tmp,
        )  # fmt: skip
        tar_size = tar.stat().st_size
        with self._bucket() as bucket:
            upload = [sys.executable, "-m", "bench.limits", "put", bucket, "1", str(tar)]
            second = run(upload, env=self.bed.s3_env(), cwd=self.cwd)
        sample = first.then(second)
        sample.extra.update(disk=max(first.tmp_peak, tar_size) + tar_size, tar=tar_size)
        self._settle(tar, tmp)
        return sample

    def bale_copy(self, pushed: Pushed, code: Path | None = None) -> Sample:
        n = self._next()
        tmp = self.bed.tmpdir("bale-copy")
        tar = self.out / f"bale-{n}.tar"
        cmd = [
            *BALE,
            "copy",
            "--src-tls-verify=false",
            "--jobs",
            str(self.cfg.jobs),
            f"docker://{pushed.ref}",
            f"docker-archive:{tar}",
        ]
        sample = run(cmd, env=self.bed.s3_env(code=code), tmpdir=tmp, cwd=self.cwd)
        sample.extra.update(tar=tar.stat().st_size, disk=sample.tmp_peak)
        self._settle(tar, tmp)
        return sample

    def skopeo_copy(self, pushed: Pushed) -> Sample:
        n = self._next()
        tmp = self.bed.tmpdir("skopeo")
        tar = self.out / f"skopeo-{n}.tar"
        sample = run(
            self.bed.skopeo_cmd(
                tmp, "copy", "--quiet", "--src-tls-verify=false", f"docker://{pushed.ref}",
                f"docker-archive:{tar}",
            ),
            env=self.bed.skopeo_env(),
            tmpdir=tmp,
        )  # fmt: skip
        sample.extra.update(tar=tar.stat().st_size, disk=sample.tmp_peak)
        self._settle(tar, tmp)
        return sample

    def bale_sync(self, pushed: Pushed, code: Path | None = None) -> Sample:
        n = self._next()
        tmp = self.bed.tmpdir("bale-sync")
        with self._fresh_registry(n) as dest:
            cmd = [
                *BALE,
                "sync",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--jobs",
                str(self.cfg.jobs),
                f"docker://{pushed.ref}",
                f"{dest.host}/bale",
            ]
            sample = run(cmd, env=self.bed.s3_env(code=code), tmpdir=tmp, cwd=self.cwd)
            sample.extra.update(disk=sample.tmp_peak, pushed=_pushed_bytes(dest))
        self._settle(tmp)
        return sample

    def skopeo_sync(self, pushed: Pushed) -> Sample:
        n = self._next()
        tmp = self.bed.tmpdir("skopeo")
        with self._fresh_registry(n) as dest:
            sample = run(
                self.bed.skopeo_cmd(
                    tmp, "sync", "--src", "docker", "--dest", "docker", "--src-tls-verify=false",
                    "--dest-tls-verify=false", pushed.ref, f"{dest.host}/skopeo",
                ),
                env=self.bed.skopeo_env(),
                tmpdir=tmp,
            )  # fmt: skip
            sample.extra.update(disk=sample.tmp_peak, pushed=_pushed_bytes(dest))
        self._settle(tmp)
        return sample

    @contextmanager
    def _fresh_registry(self, n: int) -> Iterator[RegistryServer]:
        """An empty destination registry for one run: no contender finds blobs a previous run
        left (skopeo would mount them from its blob-info cache)."""
        server = RegistryServer(self.bed.workdir / f"dest-{n}")
        server.start()
        try:
            yield server
        finally:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)

    # ---- cases -------------------------------------------------------------------------

    def case_e(self) -> None:
        """Limits: plain GET and plain boto3 PUT of each shape's blobs, SHA-256 on one core."""
        self.log("case e: limits")
        cfg = self.cfg
        sha = self.alternate(
            "e", "sha256", 1 << 30, {"sha256 one core": lambda: self._limit("sha256", "1024")}, 1
        )[0]
        self.sha_rate = _median_rate(sha)
        for shape in (cfg.big, cfg.many):
            pushed = self.image(shape)
            blobs = [pushed.image.config_descriptor, *pushed.image.layers]
            digests = [d.digest for d in blobs if d is not None]
            files = [str(pushed.image.blob_path(d)) for d in digests]

            def get(pushed: Pushed = pushed, digests: list[str] = digests) -> Sample:
                return self._limit(
                    "get", self.bed.registry.host, pushed.repo, str(cfg.jobs), *digests
                )

            def put(files: list[str] = files) -> Sample:
                with self._bucket() as bucket:
                    return self._limit("put", bucket, str(cfg.jobs), *files)

            contenders = {"plain GET": get, "plain boto3 PUT": put}
            if shape is cfg.big:
                mib = str(max(1, pushed.size >> 20))
                target = str(self.out / "limit-write.bin")
                contenders["plain file write"] = lambda m=mib, t=target: self._limit("write", t, m)
            got = self.alternate("e", shape.key, pushed.size, contenders, cfg.runs)
            if shape is cfg.big:
                self.put_rate = _median_rate(got[1])

    def _limit(self, *args: str) -> Sample:
        path = self.out / "limit.json"
        sample = run(
            [sys.executable, "-m", "bench.limits", *args],
            env=self.bed.s3_env(),
            stdout=path,
            cwd=self.cwd,
        )
        data = json.loads(path.read_text())
        sample.extra.update(data)
        sample.extra.update(inner_seconds=data["seconds"])
        self._settle()
        sample.seconds = data["seconds"]  # the transfer itself, start-up excluded
        return sample

    def case_a(self) -> None:
        self.log("case a: bale archive to S3 vs skopeo copy + boto3 upload")
        for shape in (self.cfg.big, self.cfg.many):
            pushed = self.image(shape)
            self.alternate(
                "a",
                shape.key,
                pushed.size,
                {
                    **{
                        f"bale archive{tag}": lambda p=pushed, c=code: self.bale_archive(p, code=c)
                        for tag, code in self.bed.bales()
                    },
                    "skopeo copy + boto3 upload": lambda p=pushed: self.skopeo_then_upload(p),
                },
                self.cfg.runs,
            )

    def case_a_shaped(self) -> None:
        """Registry link capped at the store's write rate: where overlap matters."""
        rate = self.put_rate or 64 * 2**20
        self.log(f"case a (shaped): registry link at {rate / 2**20:.0f} MiB/s")
        pushed = self.image(self.cfg.big)
        with Relay(self.bed.registry.host, rate=rate) as relay:
            results = self.alternate(
                "a-shaped",
                self.cfg.big.key,
                pushed.size,
                {
                    **{
                        f"bale archive{tag}": lambda c=code: self.bale_archive(
                            pushed, relay.host, code=c
                        )
                        for tag, code in self.bed.bales()
                    },
                    "skopeo copy + boto3 upload": lambda: self.skopeo_then_upload(
                        pushed, relay.host
                    ),
                },
                self.cfg.runs,
            )
        for r in results:
            r.info["link_rate"] = rate

    def case_b(self) -> None:
        self.log("case b: bale copy vs skopeo copy to a local docker-archive")
        for shape in (self.cfg.big, self.cfg.many):
            pushed = self.image(shape)
            self.alternate(
                "b",
                shape.key,
                pushed.size,
                {
                    **{
                        f"bale copy{tag}": lambda p=pushed, c=code: self.bale_copy(p, c)
                        for tag, code in self.bed.bales()
                    },
                    "skopeo copy": lambda p=pushed: self.skopeo_copy(p),
                },
                self.cfg.runs,
            )

    def case_c(self) -> None:
        if not bale_available(self.bed, "sync"):
            self.log("case c: skipped (this bale has no sync command yet)")
            return
        self.log("case c: bale sync vs skopeo sync, registry to registry")
        for shape in (self.cfg.big, self.cfg.many):
            pushed = self.image(shape)
            self.alternate(
                "c",
                shape.key,
                pushed.size,
                {
                    **{
                        f"bale sync{tag}": lambda p=pushed, c=code: self.bale_sync(p, c)
                        for tag, code in self.bed.bales()
                    },
                    "skopeo sync": lambda p=pushed: self.skopeo_sync(p),
                },
                self.cfg.runs,
            )

    def case_d(self) -> None:
        """Bytes on the wire for an image whose base is archived already."""
        self.log("case d: second image sharing base layers")
        cfg = self.cfg
        pairs = (
            (cfg.mem_small, cfg.shared_new, "large layers"),
            (cfg.many, cfg.shared_new_small, "small layers"),
        )
        for base_shape, new_layers, label in pairs:
            base = self.image(base_shape)
            second = self.image(base_shape, new_layers, name=f"{base_shape.key.lower()}-plus")
            new_digests = set(d.digest for d in second.image.layers) - set(
                d.digest for d in base.image.layers
            )
            new_bytes = sum(d.size for d in second.image.layers if d.digest in new_digests)
            result = Result("d", f"{base_shape.key}+{label}", "bale archive", second.size)
            result.info.update(new_layer_bytes=new_bytes, image_bytes=second.size)
            with (
                Relay(self.bed.registry.host) as reg,
                Relay(self.bed.s3.endpoint_url.rsplit("/", 1)[1]) as s3,
            ):
                for i in range(cfg.runs):
                    sample = self._archive_second(base, second, reg, s3)
                    result.samples.append(sample)
                    self.log(
                        f"  d {label} run {i + 1}/{cfg.runs}: registry {sample.extra['registry_down']:.0f} B, "
                        f"store up {sample.extra['store_up']:.0f} B, new {new_bytes} B"
                    )
            self.results.append(result)

    def _archive_second(self, base: Pushed, second: Pushed, reg: Relay, s3: Relay) -> Sample:
        bucket = self.bed.new_bucket()
        tmp = self.bed.tmpdir("bale-d")
        env = self.bed.s3_env(s3.url)
        common = ["--to", f"s3://{bucket}/archive", "--src-tls-verify=false"]
        try:
            run(
                [*BALE, "archive", f"docker://{_with_host(base.ref, reg.host)}", *common],
                env=env,
                tmpdir=tmp,
                cwd=self.cwd,
            )
            self._settle(tmp)
            reg.reset()
            s3.reset()
            sample = run(
                [*BALE, "archive", f"docker://{_with_host(second.ref, reg.host)}", *common],
                env=env,
                tmpdir=tmp,
                cwd=self.cwd,
            )
            r, s = reg.reset(), s3.reset()
            sample.extra.update(
                registry_down=r.down,
                registry_up=r.up,
                store_up=s.up,
                store_down=s.down,
            )
        finally:
            self.bed.drop_bucket(bucket)
            self._settle(tmp)
        return sample

    def case_m(self) -> None:
        """Peak RSS and temporary disk of bale archive, 4 GiB vs 256 MiB, same layer structure."""
        self.log("case m: memory and temporary disk")
        for shape in (self.cfg.mem_small, self.cfg.mem_big):
            pushed = self.image(shape)
            self.alternate(
                "m",
                shape.key,
                pushed.size,
                {
                    f"bale archive{tag}": lambda p=pushed, c=code: self.bale_archive(p, code=c)
                    for tag, code in self.bed.bales()
                },
                self.cfg.memory_runs,
            )
            if shape is self.cfg.mem_big:
                self.bed.drop_layer_files(pushed)

    def case_r(self) -> None:
        """bale archive over a long link: one stream per blob vs parallel ranges."""
        cfg = self.cfg
        pushed = self.image(cfg.big)
        self.log(
            f"case r: long link ({cfg.latency * 2000:.0f} ms RTT, "
            f"{cfg.window / 2**20:.0f} MiB window per connection)"
        )
        with Relay(self.bed.registry.host, latency=cfg.latency, window=cfg.window) as relay:

            def copy(streams: int) -> Sample:
                n = self._next()
                tmp = self.bed.tmpdir("bale-r")
                tar = self.out / f"bale-r-{n}.tar"
                env = self.bed.s3_env()
                env["BALE_RANGE_STREAMS"] = str(streams)
                cmd = [
                    *BALE,
                    "copy",
                    "--src-tls-verify=false",
                    f"docker://{_with_host(pushed.ref, relay.host)}",
                    f"docker-archive:{tar}",
                ]
                sample = run(cmd, env=env, tmpdir=tmp, cwd=self.cwd)
                self._settle(tar, tmp)
                return sample

            def skopeo() -> Sample:
                n = self._next()
                tmp = self.bed.tmpdir("skopeo")
                tar = self.out / f"skopeo-r-{n}.tar"
                sample = run(
                    self.bed.skopeo_cmd(
                        tmp, "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{_with_host(pushed.ref, relay.host)}", f"docker-archive:{tar}",
                    ),
                    env=self.bed.skopeo_env(),
                    tmpdir=tmp,
                )  # fmt: skip
                self._settle(tar, tmp)
                return sample

            results = self.alternate(
                "r",
                cfg.big.key,
                pushed.size,
                {
                    "bale copy, 1 stream": lambda: copy(1),
                    "bale copy, 4 ranges": lambda: copy(4),
                    "skopeo copy": skopeo,
                },
                cfg.runs,
            )
        for r in results:
            r.info.update(latency=cfg.latency, window=cfg.window)


def _pushed_bytes(server: RegistryServer) -> int:
    """Bytes of blob uploads (PATCH/PUT bodies are not logged, so: blob sizes in storage)."""
    from bench.measure import dir_size

    return dir_size(server.workdir / "data" / "docker" / "registry" / "v2" / "blobs")


def _with_host(ref: str, host: str | None) -> str:
    if host is None:
        return ref
    return f"{host}/{ref.split('/', 1)[1]}"


def _median_rate(result: Result) -> float:
    rates = sorted(s.extra["bytes"] / s.seconds for s in result.samples)
    return rates[len(rates) // 2]


class RequestCases:
    """Issue 19's counts: requests per image (case q) and start-up time (case s)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.bed = bench.bed

    def _archive_counted(
        self, refs: list[str], bucket: str, reg: FaultProxy, s3: FaultProxy, code: Path
    ) -> Sample:
        """One `bale archive` of `refs` (through both proxies), with its requests classed."""
        listing = self.bench.out / "images.txt"
        listing.write_text("".join(f"{reg.host}/{ref}\n" for ref in refs))
        reg.clear()
        s3.clear()
        tmp = self.bed.tmpdir("bale-q")
        cmd = [
            *BALE, "archive", "--from-file", str(listing), "--to", f"s3://{bucket}/archive",
            "--src-tls-verify=false", "--jobs", str(self.bench.cfg.jobs),
        ]  # fmt: skip
        sample = run(cmd, env=self.bed.s3_env(s3.url, code), tmpdir=tmp, cwd=self.bench.cwd)
        self.bench._settle(tmp)
        at_registry = requestcount.count(reg.requests, requestcount.registry_class)
        at_store = requestcount.count(s3.requests, requestcount.store_class)
        for path in requestcount.others(s3.requests, requestcount.store_class):
            self.bench.log(f"    store request of no class: {path}")
        sample.extra.update(
            images=len(refs),
            registry_requests=sum(at_registry.values()),
            store_requests=sum(at_store.values()),
        )
        sample.extra.update({f"registry: {k}": v for k, v in at_registry.items()})
        sample.extra.update({f"store: {k}": v for k, v in at_store.items()})
        return sample

    def case_q(self) -> None:
        """Requests per image for archive: 1 large layer, many small layers, and a no-op
        rerun of many small images (first run not counted)."""
        bench, cfg = self.bench, self.bench.cfg
        small = 30 if cfg.quick else 300
        self.bench.log(f"case q: requests per image (1 run each; no-op rerun of {small} images)")
        store_host = self.bed.s3.endpoint_url.rsplit("/", 1)[1]
        repos = [f"bench/many-{i}" for i in range(10)]
        refs = requestcount.push_small_images(self.bed.registry.url, repos, small // len(repos))
        for tag, code in self.bed.bales():
            with (
                FaultProxy(self.bed.registry.host) as reg,
                FaultProxy(store_host) as s3,
                bench._bucket() as bucket,
            ):
                for shape in (cfg.big, cfg.many):
                    pushed = bench.image(shape)
                    ref = pushed.ref.split("/", 1)[1]
                    sample = self._archive_counted([ref], bucket, reg, s3, code)
                    self._keep("q", shape.key, f"bale archive{tag}", pushed.size, sample)
                self._archive_counted(refs, bucket, reg, s3, code)
                sample = self._archive_counted(refs, bucket, reg, s3, code)
                self._keep("q", f"{small} small, no-op rerun", f"bale archive{tag}", 0, sample)

    def _keep(self, case: str, shape: str, name: str, payload: int, sample: Sample) -> None:
        result = Result(case, shape, name, payload, [sample])
        self.bench.results.append(result)
        extra = sample.extra
        self.bench.log(
            f"  {case} {shape} {name}: {sample.seconds:.2f}s, {extra['images']:.0f} images, "
            f"registry {extra['registry_requests']:.0f} requests, "
            f"store {extra['store_requests']:.0f} requests"
        )

    def case_s(self) -> None:
        """Start-up: `bale --version` and `bale --help`, and the imports that dominate."""
        bench = self.bench
        runs = 10
        bench.log(f"case s: start-up ({runs} runs each)")
        contenders: dict[str, Contender] = {}
        for tag, code in self.bed.bales():
            env = self.bed.s3_env(code=code)
            for arg in ("--version", "--help"):
                contenders[f"bale {arg}{tag}"] = lambda a=arg, e=env: run(
                    [*BALE, a], env=e, cwd=bench.cwd
                )
        results = bench.alternate("s", "start-up", 0, contenders, runs)
        for tag, code in self.bed.bales():
            for arg in ("--version", "--help"):
                imports = top_imports(
                    [sys.executable, "-X", "importtime", *BALE[1:], arg],
                    self.bed.s3_env(code=code),
                    bench.cwd,
                )
                for r in results:
                    if r.contender == f"bale {arg}{tag}":
                        r.info["imports"] = imports

    def case_mp(self) -> None:
        """What is resident at the peak of `bale archive`, small and large image (memray)."""
        bench, cfg = self.bench, self.bench.cfg
        bench.log("case mp: memray capture of bale archive, allocations alive at the peak")
        # BENCH_MP_RANGE_STREAMS=1 pins one stream per blob: under a profiler (and on a busy
        # machine) the first range reads slowly and bale would take the parallel-range path.
        streams = os.environ.get("BENCH_MP_RANGE_STREAMS")
        env = {"BALE_RANGE_STREAMS": streams} if streams else {}
        for shape in (cfg.mem_small, cfg.mem_big):
            pushed = bench.image(shape)
            for tag, code in self.bed.bales()[:1]:  # the profile is of the code measured
                capture = bench.out / f"memray-{bench._next()}.bin"
                prefix = [sys.executable, "-m", "memray", "run", "--aggregate", "-q"]
                profiled = [*prefix, "-o", str(capture), *BALE[1:]]
                sample = bench.bale_archive(pushed, code=code, cmd=profiled, env_extra=env)
                summary = memprofile.summarize(capture)
                capture.unlink()
                result = Result(
                    "mp",
                    shape.key,
                    f"bale archive under memray{f', BALE_RANGE_STREAMS={streams}' if streams else ''}{tag}",
                    pushed.size,
                )
                result.samples.append(sample)
                result.info["memray"] = summary
                bench.results.append(result)
                bench.log(
                    f"  mp {shape.key}{tag}: rss {sample.peak_rss / 2**20:.0f} MiB, heap peak "
                    f"{summary['peak_heap'] / 2**20:.0f} MiB; top: "
                    + "; ".join(
                        f"{s['site']} {s['bytes'] / 2**20:.1f} MiB" for s in summary["sites"][:4]
                    )
                )
            if shape is cfg.mem_big:
                self.bed.drop_layer_files(pushed)


def top_imports(cmd: list[str], env: dict[str, str], cwd: Path, n: int = 12) -> dict:
    """Where start-up goes (`-X importtime`, one run): the total, the top-level imports by
    cumulative time, and the `n` modules whose own (self) time is largest."""
    err = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=True).stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            depth = (len(m[3]) - 1) // 2
            rows.append((m[4], int(m[1]), int(m[2]), depth))
    top = sorted((r for r in rows if r[3] == 0), key=lambda r: -r[2])
    return {
        "total_us": sum(r[2] for r in top),
        "top_level": [{"module": r[0], "cumulative_us": r[2]} for r in top[:n]],
        "self": [{"module": r[0], "self_us": r[1]} for r in sorted(rows, key=lambda r: -r[1])[:n]],
    }

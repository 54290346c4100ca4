"""`python -m bench` (or `make bench`): run the cases, write results.json, results.md, bench.png.

Options (or environment): `--quick` (`BENCH_QUICK=1`: small images, 3 runs), `--cases a,b,…`
(`BENCH_CASES`; default all: e a a-shaped b c d m r), `--out DIR` (`BENCH_OUT`, default
bench/results), `--workdir DIR` (`BENCH_WORKDIR`, default a directory under /var/tmp: the
images, registry storage and moto's spool need several GiB in the full run), `--code REV|DIR`
(`BENCH_CODE`, default HEAD: the committed bale, exported, is what gets measured), `--store
moto|rgw` (`BENCH_STORE`, default moto: the S3 server of the S3 cases; rgw is Ceph's RADOS Gateway
on bluestore, tests/bed/rgw.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import config as bench_config
from bench.bed import ROOT, STORES, Bed
from bench.cases import Bench
from bench.report import Results, markdown, plot

ALL_CASES = ("e", "a", "a-shaped", "b", "c", "d", "m", "r")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "skopeo": version(["skopeo", "--version"]),
        "registry": version(["/usr/bin/docker-registry", "--version"]),
    }


def snapshot(code: str, into: Path) -> tuple[Path, str]:
    """The tree to measure: `code` itself if it is a directory, else that git revision
    exported into `into` (others may be editing the shared work tree while the bench runs)."""
    if Path(code).is_dir():
        described = subprocess.run(
            ["git", "-C", code, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return Path(code).resolve(), described or "not a git tree"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    # Byte-compiled as an install leaves it: the environment sets PYTHONDONTWRITEBYTECODE, so
    # otherwise every bale run would compile its ~60 modules again (~60 ms of CPU each time).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into / "pipeline")], check=True)
    return into, commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", default=None)
    parser.add_argument("--cases", default=os.environ.get("BENCH_CASES", ",".join(ALL_CASES)))
    parser.add_argument(
        "--out", default=os.environ.get("BENCH_OUT", str(ROOT / "bench" / "results"))
    )
    parser.add_argument(
        "--workdir", default=os.environ.get("BENCH_WORKDIR", f"/var/tmp/bale-bench-{os.getpid()}")
    )
    parser.add_argument(
        "--code",
        default=os.environ.get("BENCH_CODE", "HEAD"),
        help="What bale to measure: a git revision (exported, default HEAD) or a directory "
        "(`.` for the work tree as it is).",
    )
    parser.add_argument(
        "--store", choices=STORES, default=os.environ.get("BENCH_STORE", "moto"), help="S3 server."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the work directory.")
    args = parser.parse_args(argv)
    cfg = bench_config.load(args.quick)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(ALL_CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "bench.log"
    log_file = log_path.open("w")

    def log(message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    loads: list[dict[str, Any]] = []

    def note_load(label: str) -> None:
        one, five, fifteen = os.getloadavg()
        loads.append({"at": label, "load1": one, "load5": five, "load15": fifteen})
        log(f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({label})")

    started = time.monotonic()
    info = machine()
    log(f"bench {'quick' if cfg.quick else 'full'}: cases {' '.join(cases)}, {cfg.runs} runs")
    log(f"machine: {info['nproc']} cores, {info['cpu']}, {info['memory_gib']} GiB")
    log(f"S3 server: {args.store}")
    with Bed(Path(args.workdir), keep=args.keep, store=args.store) as bed:
        code, commit = snapshot(args.code, bed.workdir / "code")
        bed.code = code
        log(f"measuring bale from {code} ({commit})")
        bench = Bench(bed, cfg, log)
        for case in cases:
            note_load(f"before {case}")
            getattr(bench, f"case_{case.replace('-', '_')}")()
        note_load("end")
        results = [r.to_json() for r in bench.results]
    data = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": cfg.quick,
        "runs": cfg.runs,
        "jobs": cfg.jobs,
        "machine": info,
        "code": args.code,
        "store": args.store,
        "commit": commit,
        "load": loads,
        "seconds": round(time.monotonic() - started, 1),
        "shapes": {
            "big": cfg.big.key,
            "many": cfg.many.key,
            "mem_big": cfg.mem_big.key,
            "mem_small": cfg.mem_small.key,
        },
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *(argv or sys.argv[1:])]),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(data, indent=1))
    table = markdown(Results(data))
    (out / "results.md").write_text(table)
    try:
        plot(Results(data), out / "bench.png")
    except ImportError:
        log("matplotlib missing: no plot (pip install -e '.[bench]')")
    print(table)
    log(f"done in {data['seconds']:.0f}s; results in {out}")
    log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

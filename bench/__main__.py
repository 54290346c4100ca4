"""`python -m bench` (or `make bench`): run the cases, write results.json, results.md, bench.png.

Options (or environment): `--quick` (`BENCH_QUICK=1`: small images, 3 runs), `--cases a,b,…`
(`BENCH_CASES`; default all: e a a-shaped b c d m r q s), `--out DIR` (`BENCH_OUT`, default
bench/results), `--workdir DIR` (`BENCH_WORKDIR`, default a directory under /var/tmp: the
images, registry storage and moto's spool need several GiB in the full run), `--code REV|DIR`
(`BENCH_CODE`, default HEAD: the committed bale, exported, is what gets measured), `--store
moto|rgw` (`BENCH_STORE`, default moto: the S3 server of the S3 cases; rgw is Ceph's RADOS Gateway
on bluestore, tests/bed/rgw.py; `both`: every case on moto, then the store's cases again on RGW,
results in OUT/moto and OUT/rgw), `--baseline REV` (`BENCH_BASELINE`: an older commit, exported
the same way, measured as a second bale "… @REV" in the same alternating runs: old and new share
the machine's noise, which a comparison with an earlier run on an idle machine would not).
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
from bench.cases import Bench, RequestCases
from bench.report import Results, markdown, plot

ALL_CASES = ("e", "a", "a-shaped", "b", "c", "d", "m", "r", "q", "s")
PROFILES = ("mp",)
"""Not in the default run (a profiler slows bale down): ask for them with --cases."""
STORE_CASES = ("e", "a", "a-shaped", "d", "m", "q", "mp")
"""Cases that write to the S3 server: the only ones run again for a second store."""


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


def run_store(
    args: argparse.Namespace,
    cfg: bench_config.Config,
    cases: list[str],
    store: str,
    out: Path,
    argv: list[str] | None,
) -> None:
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
    log(f"S3 server: {store}")
    with Bed(Path(args.workdir), keep=args.keep, store=store) as bed:
        code, commit = snapshot(args.code, bed.workdir / "code")
        bed.code = code
        log(f"measuring bale from {code} ({commit})")
        if args.baseline:
            old, old_commit = snapshot(args.baseline, bed.workdir / "baseline")
            bed.baseline = (f" @{old_commit}", old)
            log(f"baseline: bale from {old} ({old_commit}), as contenders '… @{old_commit}'")
        bench = Bench(bed, cfg, log)
        for case in cases:
            note_load(f"before {case}")
            name = f"case_{case.replace('-', '_')}"
            (getattr(bench, name, None) or getattr(RequestCases(bench), name))()
        note_load("end")
        results = [r.to_json() for r in bench.results]
    data = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": cfg.quick,
        "runs": cfg.runs,
        "jobs": cfg.jobs,
        "machine": info,
        "code": args.code,
        "store": store,
        "baseline": bed.baseline[0].removeprefix(" @") if bed.baseline else None,
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
        "--store",
        choices=(*STORES, "both"),
        default=os.environ.get("BENCH_STORE", "moto"),
        help="S3 server.",
    )
    parser.add_argument(
        "--baseline",
        default=os.environ.get("BENCH_BASELINE") or None,
        help="An older git revision measured beside --code in the same runs.",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the work directory.")
    args = parser.parse_args(argv)
    cfg = bench_config.load(args.quick)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(ALL_CASES) - set(PROFILES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    stores = STORES if args.store == "both" else (args.store,)
    for i, store in enumerate(stores):
        todo = cases if i == 0 else [c for c in cases if c in STORE_CASES]
        out = Path(args.out) / store if len(stores) > 1 else Path(args.out)
        run_store(args, cfg, todo, store, out, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

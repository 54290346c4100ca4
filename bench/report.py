"""Medians, ratios against the issue's targets, a Markdown table and a PNG plot."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1 << 20


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    limit: float
    kind: str
    """"max" (measured must be at most limit) or "min" (at least)."""
    detail: str

    @property
    def met(self) -> bool | None:
        if self.measured is None or self.kind == "info":
            return None
        return self.measured <= self.limit if self.kind == "max" else self.measured >= self.limit

    @property
    def verdict(self) -> str:
        if self.kind == "info":
            return "context"
        return {None: "not measured", True: "met", False: "missed"}[self.met]


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


class Results:
    """The JSON the bench writes, with look-ups by case, shape and contender."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.rows: list[dict[str, Any]] = data["results"]

    def find(self, case: str, shape: str | None = None, contender: str | None = None) -> list[dict]:
        return [
            r
            for r in self.rows
            if r["case"] == case
            and (shape is None or r["shape"] == shape)
            and (contender is None or r["contender"] == contender)
        ]

    def one(self, case: str, shape: str, contender: str) -> dict[str, Any] | None:
        found = self.find(case, shape, contender)
        return found[0] if found else None

    def seconds(self, case: str, shape: str, contender: str) -> float | None:
        row = self.one(case, shape, contender)
        return median(s["seconds"] for s in row["samples"]) if row and row["samples"] else None

    def extra(self, case: str, shape: str, contender: str, name: str) -> float | None:
        row = self.one(case, shape, contender)
        if not row or not row["samples"] or name not in row["samples"][0]["extra"]:
            return None
        return median(s["extra"][name] for s in row["samples"])

    def targets(self) -> list[Target]:
        shapes = self.data["shapes"]
        big, many = shapes["big"], shapes["many"]
        out: list[Target] = []
        sha = self.one("e", "sha256", "sha256 one core")
        sha_rate = (
            median(s["extra"]["bytes"] / s["seconds"] for s in sha["samples"]) if sha else None
        )
        for shape in (big, many):
            bale = self.seconds("a", shape, "bale archive")
            get = self.seconds("e", shape, "plain GET")
            put = self.seconds("e", shape, "plain boto3 PUT")
            limit = max(get, put) if get is not None and put is not None else None
            out.append(
                Target(
                    f"(a) {shape}: bale archive / max(limit GET, limit PUT)",
                    _ratio(bale, limit),
                    1.15,
                    "max",
                    f"bale {_s(bale)}, GET {_s(get)}, PUT {_s(put)}",
                )
            )
            copy = self.extra("e", shape, "plain boto3 PUT", "copy_seconds")
            if limit is not None and copy:
                out.append(
                    Target(
                        f"(a) {shape}: bale archive / (max(GET, PUT) + server-side copy)",
                        _ratio(bale, limit + copy),
                        1.15,
                        "info",
                        f"the tar is composed in the store: plain copy of the blob {_s(copy)}",
                    )
                )
        bale = self.seconds("a-shaped", big, "bale archive")
        other = self.seconds("a-shaped", big, "skopeo copy + boto3 upload")
        out.append(
            Target(
                f"(a) {big}, registry link shaped to the store's rate: bale / (skopeo + upload)",
                _ratio(bale, other),
                0.6,
                "max",
                f"bale {_s(bale)}, skopeo + upload {_s(other)}",
            )
        )
        for shape in (big, many):
            bale = self.seconds("b", shape, "bale copy")
            other = self.seconds("b", shape, "skopeo copy")
            out.append(
                Target(
                    f"(b) {shape}: bale copy / skopeo copy",
                    _ratio(bale, other),
                    0.6,
                    "max",
                    f"bale {_s(bale)}, skopeo {_s(other)}",
                )
            )
        write = self.seconds("e", big, "plain file write")
        fsync = self.extra("e", big, "plain file write", "fsync_seconds")
        get = self.seconds("e", big, "plain GET")
        bale = self.seconds("b", big, "bale copy")
        if write is not None and get is not None and sha_rate and bale:
            row = self.one("b", big, "bale copy")
            assert row is not None
            hashing = row["payload"] / sha_rate
            floor = max(get, hashing, write) + (fsync or 0.0)
            out.append(
                Target(
                    f"(b) {big}: bale copy / max(GET, SHA-256, file write) + fsync",
                    bale / floor,
                    1.15,
                    "info",
                    f"GET {_s(get)}, SHA-256 {_s(hashing)}, write {_s(write)}, fsync {_s(fsync)}",
                )
            )
        bale_row = self.one("b", big, "bale copy")
        if bale_row and sha_rate:
            rate = bale_row["payload"] / median(s["seconds"] for s in bale_row["samples"])
            out.append(
                Target(
                    f"(b) {big}: bale copy speed / single-core SHA-256 speed",
                    rate / sha_rate,
                    0.8,
                    "min",
                    f"{rate / MiB:.0f} MiB/s vs SHA-256 {sha_rate / MiB:.0f} MiB/s",
                )
            )
        for shape in (big, many):
            bale = self.seconds("c", shape, "bale sync")
            other = self.seconds("c", shape, "skopeo sync")
            out.append(
                Target(
                    f"(c) {shape}: bale sync / skopeo sync",
                    _ratio(bale, other),
                    1.0,
                    "max",
                    f"bale {_s(bale)}, skopeo {_s(other)}",
                )
            )
        for row in self.find("d"):
            new = row["info"]["new_layer_bytes"]
            if not row["samples"]:
                continue
            down = median(s["extra"]["registry_down"] for s in row["samples"])
            up = median(s["extra"]["store_up"] for s in row["samples"])
            back = median(s["extra"]["store_down"] for s in row["samples"])
            out.append(
                Target(
                    f"(d) {row['shape']}: bytes from the registry / bytes of new layers",
                    down / new,
                    1.05,
                    "max",
                    f"{down / MiB:.1f} MiB pulled for {new / MiB:.1f} MiB new",
                )
            )
            out.append(
                Target(
                    f"(d) {row['shape']}: bytes sent to the store / bytes of new layers",
                    up / new,
                    1.05,
                    "max",
                    f"{up / MiB:.1f} MiB up, {back / MiB:.1f} MiB read back (tar compose)",
                )
            )
        mem = shapes["mem_big"], shapes["mem_small"]
        big_row, small_row = (
            self.one("m", mem[0], "bale archive"),
            self.one("m", mem[1], "bale archive"),
        )
        if big_row and small_row:
            big_rss = max(s["peak_rss"] for s in big_row["samples"])
            small_rss = max(s["peak_rss"] for s in small_row["samples"])
            out.append(
                Target(
                    f"peak RSS, {mem[0]} (MiB)",
                    big_rss / MiB,
                    200,
                    "max",
                    f"largest of {len(big_row['samples'])} runs",
                )
            )
            out.append(
                Target(
                    f"peak RSS {mem[0]} / peak RSS {mem[1]}",
                    big_rss / small_rss,
                    1.10,
                    "max",
                    f"{big_rss / MiB:.0f} MiB vs {small_rss / MiB:.0f} MiB",
                )
            )
        one = self.seconds("r", big, "bale copy, 1 stream")
        ranges = self.seconds("r", big, "bale copy, 4 ranges")
        sk = self.seconds("r", big, "skopeo copy")
        if one and ranges:
            out.append(
                Target(
                    f"(r) {big} over a long link: 1 stream / 4 parallel ranges (speed-up)",
                    one / ranges,
                    1.0,
                    "info",
                    f"1 stream {_s(one)}, 4 ranges {_s(ranges)}, skopeo {_s(sk)}",
                )
            )
        bale_rows = [r for r in self.rows if r["contender"].startswith("bale")]
        tmp = [s["tmp_peak"] for r in bale_rows for s in r["samples"]]
        if tmp:
            out.append(
                Target(
                    "temporary disk of every bale run (bytes, peak)",
                    float(max(tmp)),
                    0,
                    "max",
                    f"{len(tmp)} runs, TMPDIR watched every 50 ms",
                )
            )
        return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def markdown(results: Results) -> str:
    lines = [
        f"S3 server: {results.data.get('store', 'moto')}",
        "",
        "| case | image | contender | median s | min-max s | MiB/s | peak RSS MiB | temp disk MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results.rows:
        if not r["samples"] or r["case"] in ("d", "q"):
            continue
        secs = [s["seconds"] for s in r["samples"]]
        med = median(secs)
        payload = r["payload"]
        rss = max(s["peak_rss"] for s in r["samples"]) / MiB
        disk = max(s["extra"].get("disk", s["tmp_peak"]) for s in r["samples"]) / MiB
        lines.append(
            f"| {r['case']} | {r['shape']} | {r['contender']} | {med:.2f} | "
            f"{min(secs):.2f}-{max(secs):.2f} | {payload / med / MiB:.0f} | {rss:.0f} | {disk:.0f} |"
        )
    lines += [
        "",
        "| case d | new layers MiB | from registry MiB | to store MiB | read back MiB | image MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results.find("d"):
        if not r["samples"]:
            continue
        s = r["samples"][0]["extra"]
        lines.append(
            f"| {r['shape']} | {r['info']['new_layer_bytes'] / MiB:.1f} | "
            f"{s['registry_down'] / MiB:.1f} | {s['store_up'] / MiB:.1f} | "
            f"{s['store_down'] / MiB:.1f} | {r['payload'] / MiB:.1f} |"
        )
    lines += baseline_table(results)
    lines += requests_table(results)
    lines += imports_table(results)
    lines += ["", "| target | measured | limit | verdict | detail |", "|---|---:|---:|---|---|"]
    for t in results.targets():
        measured = "-" if t.measured is None else f"{t.measured:.2f}"
        sign = {"max": "≤", "min": "≥"}.get(t.kind, "~")
        lines.append(f"| {t.name} | {measured} | {sign} {t.limit:g} | {t.verdict} | {t.detail} |")
    return "\n".join(lines) + "\n"


def baseline_table(results: Results) -> list[str]:
    """New against old bale, both measured in the same alternating runs (`--baseline REV`):
    the ratio of medians, and a verdict that treats 10% as the noise of this machine."""
    tag = results.data.get("baseline")
    if not tag:
        return []
    lines = [
        "",
        f"| case | image | contender | new median s | new min-max s | old @{tag} median s "
        "| old min-max s | new / old | CPU s new / old | new / old peak RSS | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for old in results.rows:
        if not old["contender"].endswith(f" @{tag}") or not old["samples"]:
            continue
        name = old["contender"].removesuffix(f" @{tag}")
        new = results.one(old["case"], old["shape"], name)
        if not new or not new["samples"]:
            continue
        n = [s["seconds"] for s in new["samples"]]
        o = [s["seconds"] for s in old["samples"]]
        ratio = median(n) / median(o)
        rss = max(s["peak_rss"] for s in new["samples"]) / max(
            s["peak_rss"] for s in old["samples"]
        )
        verdict = "slower" if ratio > 1.10 else "faster" if ratio < 0.90 else "same (within 10%)"
        cpu_n = [s["extra"]["cpu_seconds"] for s in new["samples"] if "cpu_seconds" in s["extra"]]
        cpu_o = [s["extra"]["cpu_seconds"] for s in old["samples"] if "cpu_seconds" in s["extra"]]
        cpu = (
            f"{median(cpu_n):.2f} / {median(cpu_o):.2f} = {median(cpu_n) / median(cpu_o):.2f}"
            if cpu_n and cpu_o
            else "-"
        )
        lines.append(
            f"| {old['case']} | {old['shape']} | {name} | {median(n):.2f} | "
            f"{min(n):.2f}-{max(n):.2f} | {median(o):.2f} | {min(o):.2f}-{max(o):.2f} | "
            f"{ratio:.2f} | {cpu} | {rss:.2f} | {verdict} |"
        )
    return lines


def requests_table(results: Results) -> list[str]:
    """Case q: requests per image at the registry and at the store, by class."""
    rows = [r for r in results.find("q") if r["samples"]]
    if not rows:
        return []
    lines = [
        "",
        "| case q | contender | s | images | registry requests / image | store requests / image "
        "| by class (all images) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        s = r["samples"][0]
        x = s["extra"]
        n = x["images"]
        classes = ", ".join(
            f"{k} {v:.0f}" for k, v in x.items() if k.startswith(("registry: ", "store: "))
        )
        lines.append(
            f"| {r['shape']} | {r['contender']} | {s['seconds']:.2f} | {n:.0f} | "
            f"{x['registry_requests'] / n:.1f} | {x['store_requests'] / n:.1f} | {classes} |"
        )
    return lines


def imports_table(results: Results) -> list[str]:
    """Case s: where start-up goes, from one `-X importtime` run per command."""
    lines: list[str] = []
    for r in results.find("s"):
        imports = r["info"].get("imports")
        if not imports:
            continue
        top = ", ".join(
            f"{m['module']} {m['cumulative_us'] / 1000:.0f}" for m in imports["top_level"][:6]
        )
        own = ", ".join(f"{m['module']} {m['self_us'] / 1000:.1f}" for m in imports["self"][:8])
        if not lines:
            lines = [
                "",
                "| case s | imports ms | top-level imports, cumulative ms | largest own import time, ms |",
                "|---|---:|---|---|",
            ]
        lines.append(f"| {r['contender']} | {imports['total_us'] / 1000:.0f} | {top} | {own} |")
    return lines


def plot(results: Results, path: Path) -> None:
    """One panel per case: median seconds per contender, whiskers at min and max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results.rows:
        if r["samples"] and r["case"] in ("a", "a-shaped", "b", "c", "e", "r"):
            groups.setdefault(f"{r['case']}: {r['shape']}", []).append(r)
    if not groups:
        return
    cols = 2
    rows_n = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(10, 1.9 * rows_n + 0.6), squeeze=False)
    for ax, (title, rows) in zip(axes.flat, groups.items(), strict=False):
        names = [r["contender"] for r in rows]
        meds = [median(s["seconds"] for s in r["samples"]) for r in rows]
        lo = [m - min(s["seconds"] for s in r["samples"]) for m, r in zip(meds, rows, strict=True)]
        hi = [max(s["seconds"] for s in r["samples"]) - m for m, r in zip(meds, rows, strict=True)]
        colors = [
            "#2b6cb0"
            if n.startswith("bale")
            else "#a0aec0"
            if n.startswith(("plain", "sha"))
            else "#dd6b20"
            for n in names
        ]
        ax.barh(range(len(rows)), meds, xerr=[lo, hi], color=colors, capsize=3)
        ax.set_yticks(range(len(rows)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        for i, (m, h) in enumerate(zip(meds, hi, strict=True)):
            ax.text(m + h, i, f" {m:.1f}s", va="center", fontsize=7)
        ax.set_xlim(0, max(m + h for m, h in zip(meds, hi, strict=True)) * 1.25)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.suptitle("bale vs skopeo (median seconds, lower is better; whiskers min-max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def merge(base: dict[str, Any], *updates: dict[str, Any]) -> dict[str, Any]:
    """`base` with the rows of each update replacing rows of the same case, shape and
    contender (a case re-run after a change); the updates' commits and loads are kept."""
    out = dict(base)
    rows = list(base["results"])
    for update in updates:
        keys = {(r["case"], r["shape"], r["contender"]) for r in update["results"]}
        rows = [r for r in rows if (r["case"], r["shape"], r["contender"]) not in keys]
        rows += update["results"]
        cases = sorted({r["case"] for r in update["results"]})
        out.setdefault("reruns", []).append(
            {
                "cases": cases,
                "commit": update.get("commit"),
                "date": update.get("date"),
                "load": update.get("load"),
            }
        )
    out["results"] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.report BASE.json [RERUN.json ...] --out DIR`: merge and re-render."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    loaded = [json.loads(Path(f).read_text()) for f in args.files]
    data = merge(loaded[0], *loaded[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1))
    results = Results(data)
    (out / "results.md").write_text(markdown(results))
    try:
        plot(results, out / "bench.png")
    except ImportError:
        print("matplotlib missing: no plot (pip install -e '.[bench]')")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

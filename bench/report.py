"""``python -m bench.report [RESULTS.json]``: a results file as Markdown tables (for
``docs/benchmarks.md``); default ``bench/results/latest.json``."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from .run import FLOORS, GRAINS, METRICS, PEERS, ROOT, _fmt
from .systems import SYSTEMS


def markdown(doc: dict[str, Any]) -> str:
    res, systems = doc["results"], doc["systems"]
    cols = [s for s in SYSTEMS if s in systems]
    meta = doc["meta"]
    src = meta.get("grain_source", {})
    lines = [f"Measured {meta['started']}, {meta['rounds']} round(s)"
             f"{' (quick)' if meta.get('quick') else ''}, {meta['host']['cpus_usable']} "
             f"usable CPUs, Python {meta['host']['python']}, grain "
             f"{src.get('commit', '?')[:10]}{' + uncommitted changes' if src.get('uncommitted') else ''}"
             f", dask {meta['versions'].get('distributed')}, ray {meta['versions'].get('ray')}. "
             f"Median (min–max)."
             + (f" Other processes on the machine used a median of "
                f"{meta['foreign_cores_median']:.2f} cores during the measurements."
                if meta.get("foreign_cores_median") is not None else ""), "",
             "| metric | unit | " + " | ".join(cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for metric, (unit, better, label) in METRICS.items():
        if not any(metric in res.get(s, {}) for s in cols):
            continue
        cells = []
        for s in cols:
            m = res.get(s, {}).get(metric)
            if m is None:
                cells.append("unavailable" if systems[s]["unavailable"] else "")
            elif m["n"] > 1 and m["min"] != m["max"]:
                cells.append(f"{_fmt(m['median'])} ({_fmt(m['min'])}–{_fmt(m['max'])})")
            else:
                cells.append(_fmt(m["median"]))
        arrow = "↓" if better == "lower" else "↑"
        lines.append(f"| {label.strip()} | {unit} {arrow} | " + " | ".join(cells) + " |")
    lines += ["", "Grain's median ÷ the peer's median:", ""]
    pairs = [(g, p) for g in GRAINS for p in (*PEERS, *FLOORS)
             if any(p in d for d in doc["ratios"].get(g, {}).values())]
    lines += ["| metric | " + " | ".join(f"{g} / {p}" for g, p in pairs) + " |",
              "|---|" + "---:|" * len(pairs)]
    for metric, (_, better, label) in METRICS.items():
        cells = [doc["ratios"].get(g, {}).get(metric, {}).get(p) for g, p in pairs]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {label.strip()} {'↓' if better == 'lower' else '↑'} | "
                     + " | ".join(f"{c:.2f}" if c is not None else "" for c in cells) + " |")
    lines += ["", "| system | target | value | limit | result |", "|---|---|---:|---:|---|"]
    for t in doc["targets"]:
        r = {True: "met", False: "**not met**", None: f"n/a ({t.get('note', '')})"}[t["met"]]
        lines.append(f"| {t['system']} | {t['target']} | {_fmt(t['value'])} "
                     f"{t.get('unit', '')} | {_fmt(t['limit'])} | {r} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else os.path.join(ROOT, "bench", "results", "latest.json")
    with open(path) as f:
        sys.stdout.write(markdown(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory (RSS) of ``oaipipe run`` over 10k, 100k and 1M CSV rows: it must stay flat.

Each size runs in a fresh subprocess that loads and runs the pipeline in-process, then reports its
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak RSS) and wall time. Pipelines (``--kind``):

* ``sentiment``: one ``sentiment`` step (keyword analyzer) + a ``jsonl`` sink — the cheap pipeline
  used for 1M rows;
* ``ask``: an ``ask`` step on the ``local`` backend (embedded engine, no latency) + a ``jsonl`` sink.

Both use ``backend: {type: local, concurrency: 64}``; the run directory and journal are written as usual.

    python bench/memory.py [--sizes 10000 100000 1000000] [--kind sentiment|ask] [--source csv|jsonl]

The ``csv`` source keeps a map of the ids it has seen (to report duplicate ids), which grows by about
100 bytes per row; ``--source jsonl`` shows the runner alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = {
    "sentiment": "  - {type: sentiment, analyzer: keyword, input: '{text}', output: s}\n",
    "ask": "  - {type: ask, prompt: 'Reply to: {text}', output: reply}\n",
}

WORDS = ["great", "terrible", "mug", "delivery", "fast", "slow", "handle", "refund", "love", "broken"]


def make_jsonl(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            w = WORDS[i % 10], WORDS[(i * 7) % 10], WORDS[(i * 3) % 10]
            fh.write(json.dumps({"id": str(i), "text": f"Order {i}: the {w[0]} {w[1]} {w[2]} experience, thanks"})
                     + "\n")


def make_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        for i in range(rows):
            w = WORDS[i % 10], WORDS[(i * 7) % 10], WORDS[(i * 3) % 10]
            writer.writerow([i, f"Order {i}: the {w[0]} {w[1]} {w[2]} experience, thanks"])


def child(rows: int, kind: str, work: Path, source: str = "csv") -> None:
    import asyncio

    from oaipipe.pipeline import load_pipeline
    from oaipipe.runner import RunOptions, run_pipeline

    if source == "csv":
        make_csv(work / "in.csv", rows)
        block = "{type: csv, path: in.csv, id_column: id}"
    else:
        make_jsonl(work / "in.jsonl", rows)
        block = "{type: jsonl, path: in.jsonl}"  # ids line-N: no duplicate-id map
    (work / "p.yaml").write_text(
        "name: mem\nbackend: {type: local, concurrency: 64}\n"
        f"source: {block}\n"
        f"steps:\n{STEPS[kind]}sinks:\n  - {{type: jsonl, path: out.jsonl}}\n", encoding="utf-8")
    pipeline = load_pipeline(work / "p.yaml")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    summary = asyncio.run(run_pipeline(pipeline, RunOptions(fresh=True)))
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": rows, "kind": kind, "source": source, "done": summary["records"]["done"], "wall_s": wall,
                      "peak_rss_mb": peak / 1024, "rss_before_run_mb": base / 1024,
                      "records_per_s": rows / wall}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--kind", choices=sorted(STEPS), default="sentiment")
    ap.add_argument("--source", choices=["csv", "jsonl"], default="csv")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.kind, Path(args.work), args.source)
        return
    results = []
    for rows in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, __file__, "--child", str(rows), "--kind", args.kind,
                                  "--source", args.source, "--work", tmp],
                                 capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{r['rows']:>9} rows ({r['kind']}, {r.get('source', 'csv')}): peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(before the run {r['rss_before_run_mb']:.0f} MB), {r['wall_s']:.1f} s, "
                  f"{r['records_per_s']:.0f} records/s", flush=True)
    print("| rows | source | pipeline | peak RSS (MB) | RSS before the run (MB) | wall (s) | records/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['rows']:,} | {r.get('source', 'csv')} | {r['kind']} | {r['peak_rss_mb']:.0f} | {r['rss_before_run_mb']:.0f} "
              f"| {r['wall_s']:.1f} | {r['records_per_s']:.0f} |")


if __name__ == "__main__":
    main()

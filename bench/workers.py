"""A sentiment-only run (vader) with 1 and with 2 worker processes: seconds, ratio, peak memory.

Writes ``--rows`` review-like rows to a CSV in a temporary folder, then runs ``oaipipe run`` on a
sentiment-only pipeline (jsonl sink) once per ``--workers`` value, each in a fresh process, and prints a
Markdown table with the wall time, records/s, the speed-up over the first value and the peak RSS of the
largest process (the driver or one worker: ``getrusage(RUSAGE_CHILDREN).ru_maxrss``). The machine load
(1-minute load average before and after each run) is printed too: on a shared machine it bounds the figure.

    python bench/workers.py [--rows 1000000] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXTS = [
    "I love this mug it is wonderful and arrived quickly!",
    "Terrible service the handle broke and I want a refund.",
    "The parcel arrived on Tuesday.",
    "Great value and fast delivery thanks!",
    "Awful. Never again.",
    "Not bad at all but the colour is a little dull.",
    "It works. Nothing special.",
    "ABSOLUTELY FANTASTIC!!! :)",
    "The support agent was rude and unhelpful very disappointing experience overall.",
]

PIPELINE = """name: bench-workers
backend: {{type: local}}
source: {{type: csv, path: rows.csv, id_column: id}}
steps:
  - {{type: sentiment, analyzer: vader, input: "{{text}}", output: mood}}
sinks:
  - {{type: jsonl, path: out-{workers}.jsonl}}
run: {{workers: {workers}, cache: false, executor: {executor}}}
"""


def one(folder: Path, workers: int, executor: str = "local") -> None:
    """In a fresh process: run the pipeline, print seconds and the peak RSS (MB) of its processes."""
    file = folder / f"pipeline-{workers}-{executor}.yaml"
    file.write_text(PIPELINE.format(workers=workers, executor=executor), encoding="utf-8")
    exe = str(Path(sys.executable).with_name("oaipipe"))
    start = time.perf_counter()
    subprocess.run([exe, "run", str(file), "--fresh", "-q"], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{seconds:.2f} {peak:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", nargs="+", default=["1", "2"],
                    help="worker counts; WORKERS:ray runs that many Ray actors (e.g. 1 2:ray)")
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(Path(args.one[0]), int(args.one[1]), args.one[2])
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with open(folder / "rows.csv", "w", encoding="utf-8") as fh:
            fh.write("id,text\n")
            for i in range(args.rows):
                fh.write(f"r{i},{TEXTS[i % len(TEXTS)]} #{i}\n")
        print(f"{args.rows} rows, vader, {os.cpu_count()} cores\n")
        print("| workers | seconds | records/s | speed-up | peak RSS MB | load before/after |")
        print("|---|---|---|---|---|---|")
        base = None
        for spec in args.workers:
            workers, _, executor = spec.partition(":")
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, __file__, "--one", str(folder), workers, executor or "local"],
                                 check=True, capture_output=True, text=True).stdout.split()
            seconds, peak = float(out[0]), out[1]
            base = base or seconds
            print(f"| {spec} | {seconds:.1f} | {args.rows / seconds:,.0f} | {base / seconds:.2f}x | {peak} "
                  f"| {load:.1f}/{os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""A sentiment-only run (vader) with 1 and with 2 worker processes: seconds, ratio, CPU, peak memory.

Writes ``--rows`` review-like rows to a CSV in a temporary folder, then runs ``oaipipe run`` on a
sentiment-only pipeline (jsonl sink) once per ``--workers`` value and ``--repeat`` times, each in a fresh
process (the CLI's ``main`` in that process, so that its own CPU is the driver's and its children's the
workers'), and prints a Markdown table: the wall time, records/s, the speed-up over the first value's
median, the CPU seconds of the driver and of the workers (user + system), the driver's CPU per record, and
the peak RSS of the driver and of the largest worker (``getrusage``: ``ru_maxrss``). The machine load
(1-minute load average before and after each run) is printed too: on a shared machine it bounds the figure.

    python bench/workers.py [--rows 1000000] [--workers 1 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
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
    """In this fresh process: run the pipeline; print seconds, driver CPU s, workers' CPU s, driver and
    largest worker peak RSS (MB)."""
    import contextlib
    import io

    # this folder holds bench/ray.py: off the path, or `import ray` in the run finds it instead of Ray
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    from oaipipe.cli import main

    file = folder / f"pipeline-{workers}-{executor}.yaml"
    file.write_text(PIPELINE.format(workers=workers, executor=executor), encoding="utf-8")
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", str(file), "--fresh", "-q"])
    seconds = time.perf_counter() - start
    if code not in (0, None):
        raise SystemExit(f"oaipipe run exited {code}")
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{seconds:.2f} {me.ru_utime + me.ru_stime:.2f} {kids.ru_utime + kids.ru_stime:.2f} "
          f"{me.ru_maxrss / 1024:.0f} {kids.ru_maxrss / 1024:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", nargs="+", default=["1", "2"],
                    help="worker counts; WORKERS:ray runs that many Ray actors (e.g. 1 2:ray)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per worker count (the median is compared)")
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
        print("| workers | seconds | records/s | speed-up (median) | CPU s driver / workers | driver CPU µs/record "
              "| peak RSS MB driver / worker | load before/after |")
        print("|---|---|---|---|---|---|---|---|")
        base = None
        for spec in args.workers:
            workers, _, executor = spec.partition(":")
            times = []
            for _ in range(args.repeat):
                load = os.getloadavg()[0]
                out = subprocess.run([sys.executable, __file__, "--one", str(folder), workers, executor or "local"],
                                     check=True, capture_output=True, text=True).stdout.split()
                seconds, driver_cpu, workers_cpu = float(out[0]), float(out[1]), float(out[2])
                times.append(seconds)
                ratio = f"{base / statistics.median(times):.2f}x" if base else "1.00x"
                print(f"| {spec} | {seconds:.1f} | {args.rows / seconds:,.0f} | {ratio} | {driver_cpu:.1f} / "
                      f"{workers_cpu:.1f} | {driver_cpu / args.rows * 1e6:.0f} | {out[3]} / {out[4]} "
                      f"| {load:.1f}/{os.getloadavg()[0]:.1f} |", flush=True)
            base = base or statistics.median(times)


if __name__ == "__main__":
    main()

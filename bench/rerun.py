"""Rerunning a finished pipeline: wall time and number of calls (must be zero).

Runs a pipeline (``ask`` on the ``openai`` backend against the embedded server, ``--rows`` records, plus
sentiment, three sinks) to the end, then runs the *same command* again — ``oaipipe run p.yaml`` as a
subprocess, so the time includes interpreter start-up and plugin loading — and reports the wall time
and the server's request count for the rerun. Also times ``--fresh`` (a new run answered from the
response cache: zero requests).

    python bench/rerun.py [--rows 2000]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oaipipe.testing import running_server

OAIPIPE = str(Path(sys.executable).parent / "oaipipe")


def run(path: Path, *args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    out = subprocess.run([OAIPIPE, "run", str(path), "--json", *args], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_server() as srv:
        work = Path(tmp)
        with (work / "in.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "text"])
            w.writerows((i, f"review {i}: great mug, slow delivery") for i in range(args.rows))
        (work / "p.yaml").write_text(
            f"name: rerun\nbackend: {{type: openai, base_url: '{srv.base_url}', api_key: x, concurrency: 32}}\n"
            "source: {type: csv, path: in.csv, id_column: id}\nsteps:\n"
            "  - {type: ask, prompt: 'Reply to: {text}', output: reply}\n"
            "  - {type: sentiment, analyzer: vader, input: '{reply}', output: s}\n"
            "sinks:\n  - {type: dialogue-jsonl, path: out/d.jsonl}\n  - {type: jsonl, path: out/r.jsonl}\n"
            "  - {type: csv, path: out/r.csv}\n", encoding="utf-8")
        first_s, first = run(work / "p.yaml")
        requests_first = srv.stats()["requests"]
        srv.reset_stats()
        rerun_s, rerun = run(work / "p.yaml")
        requests_rerun = srv.stats()["requests"]
        srv.reset_stats()
        fresh_s, fresh = run(work / "p.yaml", "--fresh")
        requests_fresh = srv.stats()["requests"]
        start = time.perf_counter()
        subprocess.run([OAIPIPE, "--help"], capture_output=True, check=True)
        startup_s = time.perf_counter() - start
    print("| run | wall (s) | server requests | summary |")
    print("|---|---|---|---|")
    print(f"| first run, {args.rows} records | {first_s:.2f} | {requests_first} | {first['status']}, "
          f"{first['records']['done']} done |")
    print(f"| rerun of the finished run | {rerun_s:.2f} | {requests_rerun} | {rerun['status']}, "
          f"calls {rerun['calls']} |")
    print(f"| --fresh (new run, cached answers) | {fresh_s:.2f} | {requests_fresh} | {fresh['status']}, "
          f"{fresh['cached']} cached |")
    print(f"| (`oaipipe --help`, start-up alone) | {startup_s:.2f} | - | - |")


if __name__ == "__main__":
    main()

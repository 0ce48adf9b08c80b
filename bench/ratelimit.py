"""Runs against a rate-limited server: records completed, 429s seen, wall time, with and without limits.

Starts ``oaipipe serve --rpm 300`` (its own process; a fresh one for every run, so that each run meets
a full bucket) and runs ``oaipipe run p.yaml --json`` (a subprocess) on a pipeline with one ``ask`` step
at ``concurrency: 16``, response cache off, in these configurations:

* nothing configured (``openai`` and ``requests`` transports): oaipipe learns the limit from the
  ``x-ratelimit-*`` headers and the 429s;
* ``rpm: 300`` configured in the pipeline;
* ``--code DIR``: the same unconfigured run with the oaipipe source tree in DIR on ``PYTHONPATH`` (e.g. a
  checkout from before adaptive limits), to compare; the server is always this tree's.

Two server modes: ``--rate-burst 60`` (default: the bucket holds the whole minute, as OpenAI's headers
describe it; ``--records`` must exceed 300 for the limit to bite) and ``--rate-burst 1`` (the limit
enforced per second, as OpenAI says it may quantize: 5 requests a second).

    python bench/ratelimit.py [--records 400] [--quantized-records 100] [--code /work/main]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RPM = 300
SRC = Path(__file__).resolve().parent.parent


def start_server(burst: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "oaipipe.cli", "serve", "--port", "0", "--rpm", str(RPM),
                             "--rate-burst", str(burst), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.split("listening on ")[1].split()[0]


def server_stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_oaipipe/stats", timeout=10) as reply:
        return json.loads(reply.read())


def one_run(work: Path, records: int, burst: float, transport: str, rpm: int | None,
            code: str | None) -> dict:
    proc, base_url = start_server(burst)
    try:
        folder = Path(tempfile.mkdtemp(dir=work))
        with (folder / "in.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "text"])
            writer.writerows((i, f"review {i}: great mug, slow delivery") for i in range(records))
        limit = f", rpm: {rpm}" if rpm else ""
        (folder / "p.yaml").write_text(
            f"name: rl\nbackend: {{type: {transport}, base_url: '{base_url}', concurrency: 16{limit}}}\n"
            "source: {type: csv, path: in.csv, id_column: id}\nsteps:\n"
            "  - {type: ask, prompt: 'Reply to: {text}', output: reply}\n"
            "sinks:\n  - {type: jsonl, path: out/r.jsonl}\nrun: {cache: false, max_failures: 100000}\n",
            encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": code or str(SRC)}
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "oaipipe.cli", "run", "p.yaml", "--json"], cwd=folder,
                             capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        try:
            summary = json.loads(out.stdout)
        except ValueError:
            raise SystemExit(f"oaipipe run failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}") from None
        stats = server_stats(base_url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"summary": summary, "server": stats, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=400, help="records against the whole-minute bucket")
    ap.add_argument("--quantized-records", type=int, default=100, help="records against the per-second limit")
    ap.add_argument("--code", default=None, help="another oaipipe source tree to compare (on PYTHONPATH)")
    args = ap.parse_args()
    configs = [("openai", None, None, "nothing configured"), ("requests", None, None, "nothing configured"),
               ("openai", RPM, None, f"rpm: {RPM} configured")]
    if args.code:
        configs.append(("openai", None, args.code, f"nothing configured, code from {args.code}"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for burst, records in ((60.0, args.records), (1.0, args.quantized_records)):
            for transport, rpm, code, label in configs:
                result = one_run(Path(tmp), records, burst, transport, rpm, code)
                summary, server = result["summary"], result["server"]
                rec = summary.get("records", {})
                rows.append((f"`serve --rpm {RPM} --rate-burst {burst:g}`", records, transport, label,
                             rec.get("done", 0), rec.get("failed", 0), server["by_status"].get("429", 0),
                             server["requests"], summary.get("attempts", "-"), f"{result['wall']:.1f}"))
                print(json.dumps({"burst": burst, "transport": transport, "label": label, "wall": result["wall"],
                                  "server": server, "records": rec, "attempts": summary.get("attempts"),
                                  "retries": summary.get("retries"), "rate_limit": summary.get("rate_limit")}),
                      file=sys.stderr, flush=True)
    print("| server | records | transport | client limits | done | failed | 429s seen | server requests "
          "| attempts (summary) | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")


if __name__ == "__main__":
    main()

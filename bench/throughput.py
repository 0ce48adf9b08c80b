"""Records per second against ``oaipipe serve --latency 0.1``: oaipipe vs a hand-written AsyncOpenAI loop.

For each concurrency C (default 8, 16, 32) and in the same run, against the same server process:

* ``oaipipe``: a pipeline with one ``ask`` step on the ``openai`` backend (``transport: --transport``,
  default ``auto`` = the lean aiohttp transport; ``base_url`` = the server,
  ``concurrency: C``, response cache off) and a ``jsonl`` sink (the run directory and journal included);
* ``hand``: ``AsyncOpenAI`` + ``asyncio.Semaphore(C)`` sending the same messages and appending each
  reply to a JSONL file;
* ``one-at-a-time``: the same calls, awaited one after the other (once, not per C).

Each figure is the median of ``--repeat`` runs of ``--per-slot`` × C requests. ``ideal`` is C / latency.
Both contenders run inside this process (start-up excluded); ``bench/transports.py`` measures every
transport as whole processes, start-up and CPU per record included.

    python bench/throughput.py [--latency 0.1] [--concurrency 8 16 32] [--per-slot 25] [--repeat 3]
                               [--transport auto|aiohttp|sdk]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SYSTEM = "You are a helpful support agent. Answer in one sentence."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = str(Path(sys.executable).parent / "oaipipe")
    proc = subprocess.Popen([exe, "serve", "--port", str(port), "--latency", str(latency)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            urllib.request.urlopen(base + "/models", timeout=1).read()
            return proc, base
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("oaipipe serve did not start")


def texts(n: int) -> list[str]:
    return [f"Review {i}: the mug arrived quickly and looks great, but the handle is a bit small." for i in range(n)]


async def hand_loop(base: str, concurrency: int, items: list[str], out: Path) -> float:
    from openai import AsyncOpenAI

    start = time.perf_counter()
    client = AsyncOpenAI(base_url=base, api_key="bench", max_retries=0)
    sem = asyncio.Semaphore(concurrency)
    with out.open("w", encoding="utf-8") as fh:
        async def one(i: int, text: str) -> None:
            async with sem:
                r = await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Reply to: {text}"}])
            fh.write(json.dumps({"id": i, "text": text, "reply": r.choices[0].message.content}) + "\n")

        await asyncio.gather(*(one(i, t) for i, t in enumerate(items)))
    await client.close()
    return len(items) / (time.perf_counter() - start)


async def sequential(base: str, items: list[str]) -> float:
    from openai import AsyncOpenAI

    start = time.perf_counter()
    client = AsyncOpenAI(base_url=base, api_key="bench", max_retries=0)
    for text in items:
        await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Reply to: {text}"}])
    await client.close()
    return len(items) / (time.perf_counter() - start)


def oaipipe_run(base: str, concurrency: int, items: list[str], work: Path, transport: str = "auto") -> float:
    import csv

    from oaipipe.pipeline import load_pipeline
    from oaipipe.runner import RunOptions, run_pipeline

    work.mkdir(parents=True, exist_ok=True)
    with (work / "in.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows((i, t) for i, t in enumerate(items))
    (work / "p.yaml").write_text(
        "name: bench\n"
        f"backend: {{type: openai, transport: {transport}, base_url: '{base}', api_key: bench, "
        f"concurrency: {concurrency}}}\n"
        "source: {type: csv, path: in.csv, id_column: id}\n"
        f"steps:\n  - {{type: ask, system: '{SYSTEM}', prompt: 'Reply to: {{text}}', output: reply}}\n"
        "sinks:\n  - {type: jsonl, path: out.jsonl}\n"
        "run: {cache: false}\n", encoding="utf-8")
    pipeline = load_pipeline(work / "p.yaml")
    start = time.perf_counter()
    summary = asyncio.run(run_pipeline(pipeline, RunOptions(fresh=True, use_cache=False)))
    rate = len(items) / (time.perf_counter() - start)
    if summary["records"]["done"] != len(items):
        raise SystemExit(f"oaipipe run incomplete: {summary['records']} {summary.get('error')}")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--per-slot", type=int, default=25, help="requests per run = per-slot × concurrency")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sequential", type=int, default=20, help="requests of the one-at-a-time loop")
    ap.add_argument("--transport", default="auto", choices=["auto", "aiohttp", "sdk"],
                    help="transport of the openai backend in the oaipipe contender")
    args = ap.parse_args()
    proc, base = start_server(args.latency)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            seq = asyncio.run(sequential(base, texts(args.sequential)))
            for c in args.concurrency:
                items = texts(args.per_slot * c)
                hand, ours = [], []
                for r in range(args.repeat):  # interleaved, so both see the same machine state
                    hand.append(asyncio.run(hand_loop(base, c, items, root / f"hand-{c}-{r}.jsonl")))
                    ours.append(oaipipe_run(base, c, items, root / f"oaipipe-{c}-{r}", args.transport))
                h, o = statistics.median(hand), statistics.median(ours)
                ideal = c / args.latency
                rows.append({"concurrency": c, "requests": len(items), "ideal": ideal, "hand": h, "oaipipe": o,
                             "oaipipe_vs_hand": o / h, "hand_vs_ideal": h / ideal, "oaipipe_vs_ideal": o / ideal})
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"latency {args.latency * 1000:.0f} ms, python {sys.version.split()[0]}, {os.cpu_count()} cores; "
          f"one-at-a-time loop: {seq:.1f} records/s (ideal {1 / args.latency:.1f})")
    print("| concurrency | requests | ideal C/L (rec/s) | hand-written AsyncOpenAI (rec/s) | oaipipe (rec/s) "
          "| oaipipe / hand | oaipipe / ideal |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['requests']} | {r['ideal']:.0f} | {r['hand']:.1f} | {r['oaipipe']:.1f} "
              f"| {r['oaipipe_vs_hand']:.2f} | {r['oaipipe_vs_ideal']:.2f} |")
    print(json.dumps({"sequential": seq, "rows": rows}))


if __name__ == "__main__":
    main()

"""Transports side by side, whole processes: records/s and CPU-ms per record against ``oaipipe serve``.

Every figure is one fresh process (start-up included) sending ``--per-slot`` × C chat calls at
concurrency C to ``oaipipe serve --latency L`` (its own process, started once), and writing each reply to
a JSONL file. records/s = calls / wall time of the process; CPU-ms per record = the process's user + system
CPU (``os.wait4``) / calls. Contenders:

* ``--suite clients`` (which HTTP client and JSON parser for the lean transport): bare loops, no
  oaipipe: ``sdk`` (AsyncOpenAI + semaphore, the hand-written loop), ``httpx2`` (httpx2.AsyncClient,
  stdlib json), ``aiohttp-json`` (aiohttp, stdlib json), ``aiohttp-orjson`` (aiohttp, orjson);
* ``--suite pipelines`` (issue 14 item 5): ``hand`` (the hand-written AsyncOpenAI + semaphore loop),
  and ``oaipipe run`` of a one-``ask``-step pipeline (csv source, jsonl sink, run directory and journal,
  cache off) on backend ``openai`` with ``transport: aiohttp`` (the default, ``auto``), ``transport: sdk``,
  and on backend ``requests``. ``ideal`` is C / L.

* ``--suite startup``: wall and CPU time of ``oaipipe --help`` and of a one-record ``oaipipe run`` on each
  transport (the pipeline above, C = 1).

Runs are interleaved (each repeat runs every contender once) and each figure is the median of ``--repeat``.
The oaipipe package is byte-compiled first (``compileall``), the state of a pip-installed package (the SDK
the hand-written loop imports is installed so): with ``PYTHONDONTWRITEBYTECODE=1`` (set on this machine)
an editable checkout would compile every module from source in every process.

    python bench/transports.py --suite clients   [--concurrency 16 64 256] [--per-slot 20] [--repeat 3]
    python bench/transports.py --suite pipelines [--concurrency 16 64 256] [--per-slot 20] [--repeat 3]
    python bench/transports.py --suite startup   [--repeat 5]
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
HERE = Path(__file__).resolve()
EXE = str(Path(sys.executable).parent / "oaipipe")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([EXE, "serve", "--port", str(port), "--latency", str(latency)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(400):
        try:
            urllib.request.urlopen(base + "/models", timeout=1).read()
            return proc, base
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("oaipipe serve did not start")


def texts(n: int) -> list[str]:
    return [f"Review {i}: the mug arrived quickly and looks great, but the handle is a bit small." for i in range(n)]


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Reply to: {text}"}]


# --- the bare loops (run in a child process: python bench/transports.py --child KIND ...) -----------------


async def loop_sdk(base: str, c: int, items: list[str], out: Path) -> None:
    from openai import AsyncOpenAI

    # timeout 60 s as oaipipe's default (the SDK's connect timeout of 5 s fails at C = 256 on a loaded machine)
    client = AsyncOpenAI(base_url=base, api_key="bench", max_retries=0, timeout=60)
    sem = asyncio.Semaphore(c)
    with out.open("w", encoding="utf-8") as fh:
        async def one(i: int, text: str) -> None:
            async with sem:
                r = await client.chat.completions.create(model="gpt-4o-mini", messages=messages(text))
            fh.write(json.dumps({"id": i, "text": text, "reply": r.choices[0].message.content}) + "\n")

        await asyncio.gather(*(one(i, t) for i, t in enumerate(items)))
    await client.close()


async def loop_httpx2(base: str, c: int, items: list[str], out: Path) -> None:
    import httpx2

    limits = httpx2.Limits(max_connections=c, max_keepalive_connections=c)
    sem = asyncio.Semaphore(c)
    async with httpx2.AsyncClient(limits=limits, timeout=60,
                                  headers={"Authorization": "Bearer bench"}) as client:
        with out.open("w", encoding="utf-8") as fh:
            async def one(i: int, text: str) -> None:
                async with sem:
                    r = await client.post(f"{base}/chat/completions",
                                          content=json.dumps({"model": "gpt-4o-mini", "messages": messages(text)}),
                                          headers={"Content-Type": "application/json"})
                    data = json.loads(r.content)
                fh.write(json.dumps({"id": i, "text": text, "reply": data["choices"][0]["message"]["content"]}) + "\n")

            await asyncio.gather(*(one(i, t) for i, t in enumerate(items)))


async def loop_aiohttp(base: str, c: int, items: list[str], out: Path, fast_json: bool) -> None:
    import aiohttp

    if fast_json:
        import orjson

        dumps, loads = orjson.dumps, orjson.loads
    else:
        def dumps(obj: object) -> bytes:
            return json.dumps(obj).encode()

        loads = json.loads
    sem = asyncio.Semaphore(c)
    connector = aiohttp.TCPConnector(limit=c)
    async with aiohttp.ClientSession(connector=connector, headers={
            "Authorization": "Bearer bench", "Content-Type": "application/json"}) as session:
        with out.open("w", encoding="utf-8") as fh:
            async def one(i: int, text: str) -> None:
                body = dumps({"model": "gpt-4o-mini", "messages": messages(text)})
                async with sem, session.post(f"{base}/chat/completions", data=body) as r:
                    data = loads(await r.read())
                fh.write(json.dumps({"id": i, "text": text, "reply": data["choices"][0]["message"]["content"]}) + "\n")

            await asyncio.gather(*(one(i, t) for i, t in enumerate(items)))


def child(kind: str, base: str, c: int, n: int, out: Path) -> None:
    items = texts(n)
    if kind in ("sdk", "hand"):
        asyncio.run(loop_sdk(base, c, items, out))
    elif kind == "httpx2":
        asyncio.run(loop_httpx2(base, c, items, out))
    elif kind in ("aiohttp-json", "aiohttp-orjson"):
        asyncio.run(loop_aiohttp(base, c, items, out, fast_json=kind == "aiohttp-orjson"))
    else:
        raise SystemExit(f"unknown child {kind}")


# --- the parent ---------------------------------------------------------------------------------------------


def write_pipeline(work: Path, base: str, c: int, n: int, kind: str) -> Path:
    import csv

    work.mkdir(parents=True, exist_ok=True)
    with (work / "in.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows((i, t) for i, t in enumerate(texts(n)))
    backend = {"openai": "type: openai, transport: auto", "openai-sdk": "type: openai, transport: sdk",
               "requests": "type: requests"}[kind]
    (work / "p.yaml").write_text(
        "name: bench\n"
        f"backend: {{{backend}, base_url: '{base}', api_key: bench, concurrency: {c}, model: gpt-4o-mini}}\n"
        "source: {type: csv, path: in.csv, id_column: id}\n"
        f"steps:\n  - {{type: ask, system: '{SYSTEM}', prompt: 'Reply to: {{text}}', output: reply}}\n"
        "sinks:\n  - {type: jsonl, path: out.jsonl}\n"
        "run: {cache: false}\n", encoding="utf-8")
    return work / "p.yaml"


def startup(args: argparse.Namespace) -> None:
    """Start-up (transport): ``oaipipe --help`` and a one-record run per transport, wall and CPU."""
    load_before = os.getloadavg()
    proc, base = start_server(args.latency)
    kinds = ["openai", "openai-sdk", "requests"]
    runs: dict[str, list[tuple[float, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeat):
                rate, cpu = measure([EXE, "--help"], 1, Path(tmp))
                runs.setdefault("oaipipe --help", []).append((1 / rate, cpu))
                for kind in kinds:
                    work = Path(tmp) / f"{kind}-{r}"
                    rate, cpu = measure(command(kind, base, 1, 1, work), 1, work)
                    runs.setdefault(f"one-record run, {kind}", []).append((1 / rate, cpu))
    finally:
        proc.terminate()
        proc.wait(10)
    load_after = os.getloadavg()
    print(f"Start-up (transport); python {sys.version.split()[0]}; {os.cpu_count()} cores; load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f}; median of {args.repeat}; one-record runs include "
          f"one call to oaipipe serve --latency {args.latency}")
    print("| command | wall (s) | CPU (s) |")
    print("|---|---|---|")
    for name, values in runs.items():
        print(f"| {name} | {statistics.median(v[0] for v in values):.2f} "
              f"| {statistics.median(v[1] for v in values) / 1000:.2f} |")


def measure(cmd: list[str], n: int, cwd: Path) -> tuple[float, float]:
    """records/s and CPU-ms per record of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}): {err[-2000:]}")
    return n / wall, (usage.ru_utime + usage.ru_stime) * 1000 / n


def command(kind: str, base: str, c: int, n: int, work: Path) -> list[str]:
    if kind in ("openai", "openai-sdk", "requests"):
        path = write_pipeline(work, base, c, n, kind)
        return [EXE, "run", str(path), "-q", "--fresh", "--no-cache"]
    return [sys.executable, str(HERE), "--child", kind, "--base", base, "--n", str(n),
            "--concurrency", str(c), "--out", str(work / "out.jsonl")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=["clients", "pipelines", "startup"], default="pipelines")
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--per-slot", type=int, default=20, help="calls per process = per-slot × concurrency")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="+", help="run only these contenders")
    ap.add_argument("--no-compile", action="store_true", help="do not byte-compile the oaipipe package first")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.base, args.concurrency[0], args.n, Path(args.out))
        return
    import importlib.util

    spec = importlib.util.find_spec("oaipipe")
    if spec is not None and spec.submodule_search_locations and not args.no_compile:  # as installed: compiled
        subprocess.run([sys.executable, "-m", "compileall", "-q", *spec.submodule_search_locations], check=True,
                       stdout=subprocess.DEVNULL)
    if args.suite == "startup":
        startup(args)
        return
    kinds = (["sdk", "httpx2", "aiohttp-json", "aiohttp-orjson"] if args.suite == "clients"
             else ["hand", "openai-sdk", "requests", "openai"])
    kinds = [k for k in kinds if not args.only or k in args.only]
    load_before = os.getloadavg()
    proc, base = start_server(args.latency)
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for c in args.concurrency:
                n = args.per_slot * c
                for r in range(args.repeat):
                    for kind in kinds:
                        work = Path(tmp) / f"{kind}-{c}-{r}"
                        work.mkdir(parents=True, exist_ok=True)
                        results.setdefault((kind, c), []).append(measure(command(kind, base, c, n, work), n, work))
                        print(f"# C={c} repeat {r} {kind}: {results[(kind, c)][-1][0]:.1f} rec/s "
                              f"{results[(kind, c)][-1][1]:.2f} CPU-ms/rec", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    load_after = os.getloadavg()
    base_kind = "sdk" if args.suite == "clients" else "hand"
    print(f"suite {args.suite}; latency {args.latency * 1000:.0f} ms; python {sys.version.split()[0]}; "
          f"{os.cpu_count()} cores; load average before {load_before[0]:.2f}/{load_before[1]:.2f}, after "
          f"{load_after[0]:.2f}/{load_after[1]:.2f}; median of {args.repeat}; calls per process = "
          f"{args.per_slot} x C")
    print(f"| C | ideal C/L (rec/s) | contender | records/s | CPU-ms per record | rec/s vs {base_kind} "
          f"| CPU vs {base_kind} |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for c in args.concurrency:
        ref_rate = statistics.median(x[0] for x in results[(base_kind, c)]) if (base_kind, c) in results else None
        ref_cpu = statistics.median(x[1] for x in results[(base_kind, c)]) if (base_kind, c) in results else None
        for kind in kinds:
            rate = statistics.median(x[0] for x in results[(kind, c)])
            cpu = statistics.median(x[1] for x in results[(kind, c)])
            vs_rate = f"{rate / ref_rate:.2f}" if ref_rate else "-"
            vs_cpu = f"{cpu / ref_cpu:.2f}" if ref_cpu else "-"
            print(f"| {c} | {c / args.latency:.0f} | {kind} | {rate:.1f} | {cpu:.2f} | {vs_rate} | {vs_cpu} |")
            rows.append({"c": c, "kind": kind, "rate": rate, "cpu_ms": cpu, "runs": results[(kind, c)]})
    print(json.dumps({"suite": args.suite, "load_before": load_before, "load_after": load_after, "rows": rows}))


if __name__ == "__main__":
    main()

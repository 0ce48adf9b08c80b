"""Cost of the ``dialogue-json`` sink over a big run: the same pipeline with and without it.

A sentiment + ask pipeline on the ``local`` backend (the embedded engine, no latency) over N generated
CSV rows, with the demo's other sinks (``dialogue-jsonl``, ``jsonl``, ``csv``); ``--sinks minimal`` uses a
lone ``jsonl`` sink instead, which isolates the dialogue-json sink's own cost. Each variant runs in a
fresh subprocess that loads and runs the pipeline in-process and reports its wall time, its CPU time
(user + system, ``getrusage``: steadier than wall time on a machine shared with other work), the bytes it
wrote (Linux ``/proc/self/io`` ``wchar``: everything passed to write(), temp files and rewrites included)
and the size of the dialogue document. Before tail appends the sink rewrote the whole document every
50 records, so its cost grew with the square of the run.

    python bench/dialogue_json.py [--rows 200000] [--sinks demo|minimal] [--analyzer vader|null] [--repeat 1]
    python bench/dialogue_json.py --open-cost [--rows 200000]

``--analyzer null`` turns off the sink's own sentiment scoring of messages no step scored (the user
message here), which leaves only the cost of writing. ``--open-cost`` times the sink's document alone:
appending N records' entries, then opening the document for a new run (reads the tail), for a resume
with nothing to drop (walks it once), with the last record unfinished (walk + cut the tail), and with a
record in the middle unfinished (walk + rewrite).

``PYTHONPATH=/path/to/other/checkout python bench/dialogue_json.py ...`` measures another version of
oaipipe (the first line printed names the one imported).
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

WORDS = ["great", "terrible", "mug", "delivery", "fast", "slow", "handle", "refund", "love", "broken"]

STEPS = """\
steps:
  - {type: sentiment, analyzer: vader, input: "{text}", output: review_sentiment}
  - {type: ask, system: "You are a helpful support agent.", prompt: "Reply to: {text}", output: reply}
  - {type: sentiment, analyzer: keyword, input: "{reply}", output: reply_sentiment}
"""

SINKS = {
    "demo": ["{type: dialogue-jsonl, path: out/dialogue.jsonl}", "{type: jsonl, path: out/records.jsonl}",
             "{type: csv, path: out/records.csv}"],
    "minimal": ["{type: jsonl, path: out/records.jsonl}"],
}
DIALOGUE_JSON = "{type: dialogue-json, path: out/dialogue.json, analyzer: %s}"


def make_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        for i in range(rows):
            w = WORDS[i % 10], WORDS[(i * 7) % 10], WORDS[(i * 3) % 10]
            writer.writerow([i, f"Order {i}: the {w[0]} {w[1]} {w[2]} experience, thanks"])


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(rows: int, sinks: str, with_json: bool, work: Path, analyzer: str) -> None:
    import asyncio

    import oaipipe
    from oaipipe.pipeline import load_pipeline
    from oaipipe.runner import RunOptions, run_pipeline

    make_csv(work / "in.csv", rows)
    blocks = SINKS[sinks] + ([DIALOGUE_JSON % analyzer] if with_json else [])
    (work / "p.yaml").write_text(
        "name: bench\nbackend: {type: local, concurrency: 64}\nsource: {type: csv, path: in.csv, id_column: id}\n"
        + STEPS + "sinks:\n" + "".join(f"  - {b}\n" for b in blocks), encoding="utf-8")
    pipeline = load_pipeline(work / "p.yaml")
    written, cpu = wchar(), cpu_s()
    start = time.perf_counter()
    summary = asyncio.run(run_pipeline(pipeline, RunOptions(fresh=True)))
    wall = time.perf_counter() - start
    written, cpu = wchar() - written, cpu_s() - cpu
    doc = work / "out" / "dialogue.json"
    if with_json:
        assert len(json.loads(doc.read_text(encoding="utf-8"))) == 3 * rows  # valid, every entry once
    print(json.dumps({"rows": rows, "sinks": sinks, "analyzer": analyzer, "dialogue_json": with_json, "oaipipe": oaipipe.__file__,
                      "done": summary["records"]["done"], "wall_s": wall, "cpu_s": cpu, "records_per_s": rows / wall,
                      "written_mb": written / 1e6, "document_mb": doc.stat().st_size / 1e6 if with_json else 0}))


def open_cost(rows: int, work: Path) -> None:
    from oaipipe.kit.sinks import JsonArrayLog

    def log() -> JsonArrayLog:
        return JsonArrayLog(work / "dialogue.json", indent=2, label="dialogue-json", run_key="run_id",
                            id_key="record_id", is_entry=lambda e: isinstance(e, dict) and "role" in e)

    def timed(what: str, run_id: str, done: set[str] | None) -> None:
        doc = log()
        start = time.perf_counter()
        doc.open(run_id=run_id, done_ids=done)
        took = time.perf_counter() - start
        doc.close()
        print(f"| {what} | {took * 1000:,.1f} ms |", flush=True)

    sentiment = {"label": "positive", "score": 0.4404, "analyzer": "vader"}
    doc = log()
    doc.open(run_id="R1", done_ids=None)
    start, cpu = time.perf_counter(), cpu_s()
    for i in range(rows):
        doc.append([{"role": role, "content": text, "sentiment": sentiment, "record_id": str(i), "run_id": "R1",
                     "step": "ask:reply", "time": "2026-11-30T02:18:50.223Z"}
                    for role, text in (("system", "You are a helpful support agent."),
                                       ("user", f"Reply to: Order {i}: the great mug experience, thanks"),
                                       ("assistant", f"Thank you for your message about order {i}. We are glad."))])
    took, cpu = time.perf_counter() - start, cpu_s() - cpu
    doc.close()
    size = (work / "dialogue.json").stat().st_size
    print(f"{rows:,} records appended in {took:.1f} s (CPU {cpu:.1f} s, {cpu / rows * 1e6:.0f} µs per record); "
          f"document {size / 1e6:.0f} MB\n\n| open | time |\n|---|---|", flush=True)
    ids = {str(i) for i in range(rows)}
    timed("new run (reads the tail)", "R2", None)
    timed("resume, nothing to drop (walks the document once)", "R1", ids)
    timed("resume, last record unfinished (walk + cut the tail)", "R1", ids - {str(rows - 1)})
    timed("resume, a record in the middle unfinished (walk + atomic rewrite)", "R1", ids - {str(rows // 2)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--sinks", choices=sorted(SINKS), default="demo")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each variant (interleaved); the fastest is reported")
    ap.add_argument("--analyzer", choices=["vader", "null"], default="vader",
                    help="the dialogue-json sink's analyzer for messages no step scored")
    ap.add_argument("--open-cost", action="store_true", help="time the sink's document alone (see above)")
    ap.add_argument("--child", choices=["with", "without"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.rows, args.sinks, args.child == "with", Path(args.work), args.analyzer)
        return
    if args.open_cost:
        with tempfile.TemporaryDirectory() as tmp:
            open_cost(args.rows, Path(tmp))
        return
    results: dict[str, list[dict]] = {"without": [], "with": []}
    for _ in range(args.repeat):
        for variant in ("without", "with"):
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run([sys.executable, __file__, "--child", variant, "--rows", str(args.rows),
                                      "--sinks", args.sinks, "--analyzer", args.analyzer, "--work", tmp],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(out.stderr)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[variant].append(r)
                print(f"{variant:>7} dialogue-json: {r['rows']:,} rows in {r['wall_s']:.1f} s "
                      f"({r['records_per_s']:.0f} rec/s, CPU {r['cpu_s']:.1f} s), {r['written_mb']:.0f} MB written, document "
                      f"{r['document_mb']:.0f} MB  [{r['oaipipe']}]", flush=True)

    def best(variant: str, key: str) -> float:  # the run least disturbed by other work on the machine
        return min(r[key] for r in results[variant])

    wall, cpu = {v: best(v, "wall_s") for v in results}, {v: best(v, "cpu_s") for v in results}
    written, doc = {v: best(v, "written_mb") for v in results}, best("with", "document_mb")
    print(f"\nsink analyzer: {args.analyzer}")
    print(f"\n| rows | other sinks | runs | wall without / with (s) | wall ratio | CPU without / with (s) | CPU ratio "
          f"| written without / with (MB) | document (MB) |\n|---|---|---|---|---|---|---|---|---|\n"
          f"| {args.rows:,} | {args.sinks} | {args.repeat} | {wall['without']:.1f} / {wall['with']:.1f} "
          f"| {wall['with'] / wall['without']:.2f}× | {cpu['without']:.1f} / {cpu['with']:.1f} "
          f"| {cpu['with'] / cpu['without']:.2f}× | {written['without']:.0f} / {written['with']:.0f} | {doc:.0f} |")


if __name__ == "__main__":
    main()

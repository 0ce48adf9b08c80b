"""Prompt-prefix scheduling (issue 11): records whose prompts share a long prefix are sent together, within
the runner's window, so that a prompt cache serves them; the output order, journal and exactly-once stay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from oaipipe.pipeline import load_pipeline
from oaipipe.runner import run_pipeline_file
from oaipipe.scheduling import PREFIX_CHARS, PrefixGate, prefix_key
from oaipipe.server.promptcache import BLOCK, MINIMUM, prompt_token_sequence
from oaipipe.testing import PipelineProject, running_server

MODEL = "gpt-4.1-mini"
#: two long, different instructions; the records alternate between them
PREAMBLES = {"A": "You review kitchen products with care and say what works. " * 100,
             "B": "Summarise the weather report in plain words for farmers. " * 90}
N = 8


def _rows() -> list[list[str]]:
    """``id, preamble, text``: the records alternate between the two preambles (A, B, A, B, ...)."""
    return [["id", "preamble", "text"]] + [[str(i), PREAMBLES["AB"[i % 2]], f"item {i}"] for i in range(N)]


def _write(tmp_path: Path, backend: str, scheduling: bool = True) -> Path:
    return PipelineProject(tmp_path).write(
        f"name: sched\nbackend: {backend}\n"
        "source: {type: csv, path: r.csv, id_column: id}\n"
        'steps:\n  - {type: ask, system: "{preamble}", prompt: "Reply to: {text}", output: reply}\n'
        "sinks:\n  - {type: jsonl, path: out/r.jsonl}\n"
        f"run: {{cache: false, prefix_scheduling: {str(scheduling).lower()}}}\n",
        files={"r.csv": _rows()})


def _boundaries(preamble: str) -> int:
    """How many 128-token prefix blocks serve remembers for one record's prompt."""
    seq = prompt_token_sequence([{"role": "system", "content": preamble},
                                 {"role": "user", "content": "Reply to: item 0"}], MODEL)
    assert len(seq) >= MINIMUM, "the preamble must be long enough to be cached"
    return len(seq) // BLOCK - (MINIMUM // BLOCK - 1)


@pytest.mark.parametrize("scheduling", [True, False])
def test_prompts_sharing_a_prefix_go_out_together_and_hit_the_cache(tmp_path: Path, scheduling: bool) -> None:
    """A prompt cache that holds one prompt's prefix (serve's ``prompt_cache_size``): records alternating
    between two long system prompts never hit it in input order; grouped, all but the first of each do."""
    blocks = _boundaries(PREAMBLES["A"])
    assert blocks == _boundaries(PREAMBLES["B"])
    with running_server(prompt_cache_size=blocks) as srv:
        backend = f"{{type: requests, base_url: '{srv.base_url}', model: {MODEL}, concurrency: 1}}"
        summary = run_pipeline_file(_write(tmp_path, backend, scheduling))
    assert summary["status"] == "finished", summary.get("error")
    cached = summary["tokens"]["cached"]
    per_hit = MINIMUM + (blocks - 1) * BLOCK
    if scheduling:
        assert cached == (N - 2) * per_hit, summary["tokens"]  # each group pays for its prefix once
    else:
        assert cached == 0, summary["tokens"]
    # the output and the journal are in input order either way, each record once
    written = [json.loads(line)["id"] for line in (tmp_path / "out" / "r.jsonl").read_text().splitlines()]
    assert written == [str(i) for i in range(N)]
    run_dir = Path(summary["run_dir"])
    journal = [json.loads(line)["id"] for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert sorted(journal) == sorted(written) and len(journal) == N


def test_no_key_where_scheduling_cannot_help(tmp_path: Path) -> None:
    local = load_pipeline(_write(tmp_path / "local", "{type: local, model: gpt-6-luna}"))
    assert prefix_key(local) is None  # the embedded engine has no prompt cache
    off = load_pipeline(_write(tmp_path / "off", "{type: requests, base_url: 'http://127.0.0.1:9/v1'}", False))
    assert prefix_key(off) is None
    online = load_pipeline(_write(tmp_path / "on", "{type: requests, base_url: 'http://127.0.0.1:9/v1'}"))
    key = prefix_key(online)
    assert key is not None
    records = list(online.source.records())
    assert key(records[0]) == key(records[2]) != key(records[1])
    assert key(records[0]) is not None and len(key(records[0])[1]) == PREFIX_CHARS  # type: ignore[index]
    short = records[0].__class__(id="x", data={"preamble": "Be brief.", "text": "hi"})
    assert key(short) is None  # too short to be cached: it keeps its place


def test_the_gate_groups_by_key_within_its_waiters_and_is_fifo_without_keys() -> None:
    async def order(keys: list[str | None], with_keys: bool) -> list[int]:
        gate = PrefixGate(1, (lambda r: r["key"]) if with_keys else None)
        sent: list[int] = []

        async def one(i: int) -> None:
            async with gate.slot({"key": keys[i]}):  # type: ignore[arg-type]
                sent.append(i)
                await asyncio.sleep(0)

        await asyncio.gather(*(one(i) for i in range(len(keys))))
        return sent

    keys: list[str | None] = ["a", "b", "a", None, "b", "a"]
    assert asyncio.run(order(keys, True)) == [0, 2, 5, 1, 4, 3]
    assert asyncio.run(order(keys, False)) == [0, 1, 2, 3, 4, 5]


def test_a_cancelled_waiter_gives_its_slot_on() -> None:
    async def go() -> list[str]:
        gate = PrefixGate(1, lambda r: r["key"])  # type: ignore[index]
        sent: list[str] = []
        release = asyncio.Event()

        async def one(name: str) -> None:
            async with gate.slot({"key": "k"}):  # type: ignore[arg-type]
                sent.append(name)
                if name == "first":
                    await release.wait()

        first = asyncio.create_task(one("first"))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(one("doomed"))
        last = asyncio.create_task(one("last"))
        await asyncio.sleep(0)
        doomed.cancel()
        release.set()
        await asyncio.gather(first, last)
        assert doomed.cancelled()
        return sent

    assert asyncio.run(go()) == ["first", "last"]


def test_input_order_is_kept_under_concurrency(tmp_path: Path, server: Any) -> None:
    backend = f"{{type: requests, base_url: '{server.base_url}', model: {MODEL}, concurrency: 3}}"
    summary = run_pipeline_file(_write(tmp_path, backend))
    assert summary["status"] == "finished" and summary["records"]["done"] == N, summary
    written = [json.loads(line)["id"] for line in (tmp_path / "out" / "r.jsonl").read_text().splitlines()]
    assert written == [str(i) for i in range(N)]


def test_an_input_without_shared_prefixes_stops_being_looked_at(tmp_path: Path) -> None:
    """Unique long prompts, or one prompt prefix for all: after PROBE_RECORDS records no prompt is rendered
    for scheduling (a no-op)."""
    from oaipipe.scheduling import PROBE_RECORDS
    from oaipipe.types import Record

    pipeline = load_pipeline(_write(tmp_path, "{type: requests, base_url: 'http://127.0.0.1:9/v1'}"))
    key = prefix_key(pipeline)
    assert key is not None
    unique = [Record(id=str(i), data={"preamble": f"{i} " + "x" * PREFIX_CHARS, "text": "t"})
              for i in range(PROBE_RECORDS + 1)]
    assert all(key(r) is not None for r in unique[:PROBE_RECORDS])
    assert key(unique[-1]) is None
    again = prefix_key(pipeline)
    assert again is not None
    shared = Record(id="s", data={"preamble": "y" * PREFIX_CHARS, "text": "t"})
    assert again(shared) is not None and again(shared) is not None  # a repeat: scheduling stays on
    assert all(again(r) is not None for r in unique)
    same = prefix_key(pipeline)
    assert same is not None
    assert all(same(shared) is not None for _ in range(PROBE_RECORDS))
    assert same(shared) is None  # one prefix for every record: nothing to group (FIFO already groups it)

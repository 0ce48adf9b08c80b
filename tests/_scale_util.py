"""Helpers shared by the scale tests (cache, resume, rate limits, dry run, batch, resilience)."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path
from typing import Any

from oaipipe.testing import PipelineProject

#: a plugin with a priced, call-counting backend (model gpt-4o-mini, fixed usage) and a slow step
PRICED_PLUGIN = '''
from __future__ import annotations
import asyncio, json, os
from pydantic import Field
from oaipipe import hookimpl
from oaipipe.base import Backend, BackendOptions, Step, StepOptions
from oaipipe.types import ChatResponse, Usage


class Priced(Backend):
    class Options(BackendOptions):
        latency: float = Field(0.0, ge=0)
        calls_file: str | None = None

    async def chat(self, request):
        if self.options.latency:
            await asyncio.sleep(self.options.latency)
        if self.options.calls_file:
            with open(self.options.calls_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(request.messages[-1]["content"]) + "\\n")
        return ChatResponse(text="ok: " + str(request.messages[-1]["content"]), model="gpt-4o-mini",
                            backend="priced", usage=Usage(1000, 1000, 2000))


class Sleep(Step):
    class Options(StepOptions):
        seconds: float = 0.0

    async def run(self, fields, ctx):
        await asyncio.sleep(float(fields.get("sleep") or self.options.seconds))
        return {self.options.output: "slept"}


@hookimpl
def register_backends(register):
    register("priced", Priced)


@hookimpl
def register_steps(register):
    register("sleep", Sleep)
'''


def review_rows(n: int, *, extra: dict[str, Any] | None = None) -> list[list[str]]:
    """A header and ``n`` rows ``id, text, *extra`` (the reviews the scale tests run over)."""
    cols = ["id", "text", *(extra or {})]
    return [cols] + [[str(i), f"review number {i}: it was fine", *(extra or {}).values()] for i in range(1, n + 1)]


def write_csv(path: Path, n: int, *, extra: dict[str, Any] | None = None) -> Path:
    return PipelineProject(path.parent).write_file(path.name, review_rows(n, extra=extra))


def write_pipeline(tmp_path: Path, backend: str, *, n: int = 6, steps: str | None = None, extra: str = "",
                   name: str = "t", sinks: str | None = None, plugin: bool = False) -> Path:
    """``p.yaml`` over ``r.csv`` (``n`` rows, kept if it exists) in ``tmp_path``: a thin wrapper over
    :class:`oaipipe.testing.PipelineProject` that keeps the YAML text the scale tests edit."""
    project = PipelineProject(tmp_path, filename="p.yaml")
    files: dict[str, Any] = {}
    if not (tmp_path / "r.csv").exists():
        files["r.csv"] = review_rows(n)
    if plugin:
        files["priced_plugin.py"] = PRICED_PLUGIN
    steps = steps or textwrap.dedent("""\
      - {type: ask, system: "Be brief.", prompt: "Reply to: {text}", output: reply}
      - {type: sentiment, analyzer: keyword, input: "{reply}", output: reply_sentiment}
    """)
    sinks = sinks or textwrap.dedent("""\
      - {type: dialogue-jsonl, path: out/dialogue.jsonl}
      - {type: jsonl, path: out/records.jsonl}
      - {type: csv, path: out/records.csv}
    """)
    text = f"name: {name}\n"
    if plugin:
        text += "plugins: [priced_plugin.py]\n"
    text += f"backend: {backend}\nsource: {{type: csv, path: r.csv, id_column: id}}\nsteps:\n"
    text += textwrap.indent(steps, "  ") + "sinks:\n" + textwrap.indent(sinks, "  ") + extra
    return project.write(text, files=files)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_csv_ids(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [row["record_id"] for row in csv.DictReader(fh)]


#: the paths of a model call: Chat Completions, or Responses (what `api: auto` picks for the default model)
MODEL_CALL_PATHS = ("/v1/chat/completions", "/v1/responses")


def model_calls(stats: dict[str, Any]) -> int:
    """The model calls in a server's ``stats()``, on either API."""
    return sum(int(stats["by_path"].get(path, 0)) for path in MODEL_CALL_PATHS)


def chat_requests(srv: Any) -> int:
    """The model calls the server got (Chat Completions or Responses)."""
    return model_calls(srv.stats())

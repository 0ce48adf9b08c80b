"""A pipeline's ``models:`` block (issue 11): what it says of a model wins over the built-in model and price
tables everywhere they are used (pricing, ``api: auto``, the shutdown checks, the dry run), and a bad entry is
refused with its file, line and fix."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from _scale_util import write_pipeline

from oaipipe.pricing import PriceTable
from oaipipe.runner import run_pipeline_file

STEPS = '- {type: ask, prompt: "Reply to: {text}", output: reply}\n'
SINKS = "- {type: jsonl, path: out/r.jsonl}\n"


def _pipeline(tmp_path: Path, backend: str, models: str) -> Path:
    return write_pipeline(tmp_path, backend, n=2, steps=STEPS, sinks=SINKS, extra=f"models:\n{models}")


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str, today: str = "2026-11-30") -> tuple[int, str]:
    from oaipipe.cli import main

    monkeypatch.setenv("OAIPIPE_TODAY", today)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-sent")  # nothing is called
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(args))
    return int(code), out.getvalue()


@pytest.mark.parametrize(("entry", "message", "fix"), [
    ("{input: -0.1, output: 1}", "greater than or equal to 0", "oaipipe schema"),
    ("{shutdown: next January}", "valid date", "oaipipe schema"),
    ("{imput: 0.1}", "unknown key 'imput' (did you mean 'input'?)", "oaipipe schema"),
    ("{api: completions}", "'responses' or 'chat'", "oaipipe schema"),
    ("{cached_input: 0.01}", "has no 'input' and no 'output' price", "`input: USD_PER_1M`"),
    ("{input: true, output: 1}", "valid number", "oaipipe schema"),
    ("{input: '0.1', output: 1}", "valid number", "oaipipe schema"),
    ("{input: 0.1, cached_input: 0.5, output: 1}", "cached_input (0.5) is above input (0.1)", "oaipipe schema"),
])
def test_a_bad_entry_is_refused_with_file_line_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       entry: str, message: str, fix: str) -> None:
    path = _pipeline(tmp_path, "{type: openai, model: my-model}", f"  my-model: {entry}\n")
    code, out = _cli(monkeypatch, "validate", str(path))
    assert code == 2, out
    assert message in out, out
    assert fix in out, out
    line = path.read_text().splitlines().index(f"  my-model: {entry}") + 1
    assert f"{path}:{line}" in out, out


def test_a_shutdown_date_of_the_block_warns_and_then_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _pipeline(tmp_path, "{type: openai, model: gpt-6-luna}",
                     "  gpt-6-luna: {shutdown: 2027-01-20, substitute: gpt-7}\n")
    code, out = _cli(monkeypatch, "validate", str(path))
    assert code == 0 and "gpt-6-luna shuts down on 2027-01-20, in 51 days; use gpt-7 instead" in out, out
    code, out = _cli(monkeypatch, "validate", str(path), today="2027-01-20")
    assert code == 2 and "gpt-6-luna was shut down on 2027-01-20" in out and "model: gpt-7" in out, out
    # an entry can also take a date back: the table's gpt-4o-mini (2027-01-14) moved to a later day
    later = _pipeline(tmp_path, "{type: openai, model: gpt-4o-mini}", "  gpt-4o-mini: {shutdown: 2099-01-01}\n")
    code, out = _cli(monkeypatch, "validate", str(later), today="2027-02-01")
    assert code == 0 and "shut down on" not in out and "shuts down" not in out, out


def test_the_block_applies_to_another_server_where_the_table_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Any) -> None:
    backend = f"{{type: requests, model: o4-mini, base_url: '{server.base_url}'}}"
    plain = write_pipeline(tmp_path, backend, n=2, steps=STEPS, sinks=SINKS)
    assert _cli(monkeypatch, "validate", str(plain))[0] == 0  # the table's o4-mini date is OpenAI's only
    path = _pipeline(tmp_path, backend, "  o4-mini: {shutdown: 2026-11-01}\n")
    code, out = _cli(monkeypatch, "validate", str(path))
    assert code == 2 and "o4-mini was shut down on 2026-11-01" in out, out


def test_prices_of_the_block_bill_the_run_and_prices_win_over_them(tmp_path: Path, server: Any) -> None:
    """serve answers as ``local:MODEL``: the block prices that id; ``prices:`` still wins field by field."""
    backend = f"{{type: requests, model: gpt-4.1-mini, base_url: '{server.base_url}', concurrency: 1}}"
    path = write_pipeline(tmp_path, backend, n=2, steps=STEPS, sinks=SINKS,
                          extra='models:\n  "local:gpt-4.1-mini": {input: 2.0, output: 8.0, cached_input: 0.5, '
                                'shutdown: 2099-01-01}\n'
                                'prices:\n  "local:gpt-4.1-mini": {output: 4.0}\n')
    summary = run_pipeline_file(path)
    assert summary["status"] == "finished", summary.get("error")
    tokens = summary["tokens"]
    assert tokens["prompt"] > 0 and tokens["completion"] > 0
    expected = ((tokens["prompt"] - tokens["cached"]) * 2.0 + tokens["cached"] * 0.5
                + tokens["completion"] * 4.0) / 1_000_000
    assert summary["cost_usd"] == pytest.approx(expected, abs=2e-6)
    from oaipipe.store import open_store

    with open_store(tmp_path / "runs", sync=False) as store:  # the run store prices from the saved config
        (stored,) = store.query("SELECT sum(cost_usd) FROM exchanges")[0]
    assert stored == pytest.approx(summary["cost_usd"], abs=2e-6)


def test_the_dry_run_prices_from_the_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = "{type: openai, model: my-model}"
    unknown = write_pipeline(tmp_path, backend, n=2, steps=STEPS, sinks=SINKS)
    code, out = _cli(monkeypatch, "run", str(unknown), "--dry-run", "--json")
    assert code == 0, out
    assert json.loads(out)["estimate"]["cost_usd"] == 0
    path = _pipeline(tmp_path, backend, "  my-model: {input: 1000, output: 1000}\n")
    code, out = _cli(monkeypatch, "run", str(path), "--dry-run", "--json")
    assert code == 0, out
    assert json.loads(out)["estimate"]["cost_usd"] > 0


def test_api_auto_follows_the_block(tmp_path: Path, server: Any) -> None:
    """gpt-4.1-mini goes to chat by the table; the block sends it to Responses (api_models still wins)."""
    backend = f"{{type: requests, model: gpt-4.1-mini, base_url: '{server.base_url}'}}"
    path = _pipeline(tmp_path, backend, "  gpt-4.1: {api: responses}\n")
    summary = run_pipeline_file(path)
    assert summary["status"] == "finished", summary.get("error")
    paths = server.stats()["by_path"]
    assert paths.get("/v1/responses") == 2 and not paths.get("/v1/chat/completions"), paths
    server.reset_stats()
    backend = (f"{{type: requests, model: gpt-4.1-mini, base_url: '{server.base_url}', "
               "api_models: {gpt-4.1-mini: chat}}")
    path = _pipeline(tmp_path, backend, "  gpt-4.1: {api: responses}\nrun: {cache: false}\n")
    assert run_pipeline_file(path)["status"] == "finished"
    paths = server.stats()["by_path"]
    assert paths.get("/v1/chat/completions") == 2 and not paths.get("/v1/responses"), paths


def test_the_schema_documents_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = _cli(monkeypatch, "schema")
    assert code == 0
    schema = json.loads(out)
    entry = schema["properties"]["models"]["anyOf"][0]["additionalProperties"]
    fields = schema["$defs"][entry["$ref"].split("/")[-1]]["properties"]
    assert {"input", "cached_input", "output", "context", "api", "shutdown", "fine_tunable"} <= set(fields)


def test_fine_tuned_models_have_a_cached_price_from_their_base() -> None:
    """OpenAI lists gpt-4.1-mini fine-tunes at 0.80 input / 0.20 cached / 3.20 output (docs/platform.md)."""
    table = PriceTable()
    price = table.lookup("ft:gpt-4.1-mini-2025-04-14:org::abc")
    assert (price.input, price.cached_input, price.output) == (0.80, 0.20, 3.20)
    assert table.lookup("ft:gpt-4.1-2025-04-14:org::abc").cached_input == 0.75
    assert table.lookup("ft:gpt-3.5-turbo:org::abc").cached_input is None  # the base has no cached price
    assert price.cost(1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(0.20)


def test_no_example_sets_a_model_that_is_shut_down_or_is_gpt_4o_mini() -> None:
    """The docs, README, examples and plugins set no model that is past its shutdown at the table's date, nor
    gpt-4o-mini (shutting down 2027-01-14: the demo moved to gpt-6-luna), except where the point is the
    model itself (its image rule, the id the local trainer gives its default base)."""
    import re

    from oaipipe.lifecycle import shutdown_problem
    from oaipipe.models_table import AS_OF, MODELS

    repo = Path(__file__).resolve().parent.parent
    day = __import__("datetime").date.fromisoformat(AS_OF)
    gone = {m for m, info in MODELS.items()
            if (shutdown_problem(m, info.shutdown, on=day) or ("", ""))[0] == "error"} | {"gpt-4o-mini"}
    names = "|".join(re.escape(m) for m in sorted(gone, key=len, reverse=True))
    setting = re.compile(rf"""(model["']?\s*[:=]\s*["']?|--model\s+)(ft:)?({names})(?![\w.-])""")
    allowed = ['image_tokens(1024, 1024, "high", model="gpt-4o-mini")',  # gpt-4o-mini's image rule
               "oaipipe ask --model ft:gpt-4o-mini:local:oaipipe:"]      # what the local trainer names it
    files = [repo / "README.md", *(repo / "docs").glob("*.md"), *(repo / "examples").rglob("*"),
             *(repo / "plugins").rglob("*")]
    found = []
    for path in files:
        if not path.is_file() or path.suffix not in (".md", ".yaml", ".yml", ".py", ".json", ".toml"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if setting.search(line) and not any(a in line for a in allowed):
                found.append(f"{path.relative_to(repo)}:{n}: {line.strip()}")
    assert found == [], "\n".join(found)

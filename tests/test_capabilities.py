"""Capabilities, not names: a renamed copy of a built-in plugin behaves exactly like the original.

The core asks a component what it can do (``Backend.offline``/``priced``/``batched``/``cacheable``,
``Step.writes_sentiment``/``sends_images``) and never compares its registered name. Here a plugin module
registers subclasses of the ``local`` and ``batch`` backends and of the ``sentiment`` and ``describe_image``
steps under other names, and each is run next to its original: pricing, cache, dry run, training
selection and the offline headline come out the same. A meta-test keeps name checks from coming back.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from _scale_util import write_pipeline

from oaipipe.errors import ConfigError
from oaipipe.models_table import DEFAULT_MODEL
from oaipipe.pipeline import load_pipeline
from oaipipe.progress import PlainReporter
from oaipipe.runner import run_pipeline_file

REPO = Path(__file__).resolve().parent.parent

RENAMED = '''
from oaipipe import hookimpl
from oaipipe.builtin.backend_batch import BatchBackend
from oaipipe.builtin.backend_local import LocalBackend
from oaipipe.builtin.step_describe_image import DescribeImageStep
from oaipipe.builtin.step_sentiment import SentimentStep


class MyLocal(LocalBackend):
    """The embedded engine under another name."""


class MyBatch(BatchBackend):
    """The Batch API under another name."""


class Mood(SentimentStep):
    """The sentiment step under another name."""


class Look(DescribeImageStep):
    """The vision step under another name."""


@hookimpl
def register_backends(register):
    register("mylocal", MyLocal)
    register("mybatch", MyBatch)


@hookimpl
def register_steps(register):
    register("mood", Mood)
    register("look", Look)
'''

PLUGINS = "plugins: [renamed.py]\n"
#: an explicit price for the engine's model label: the only way its calls cost something
LOCAL_PRICE = f'prices: {{"local:{DEFAULT_MODEL}": {{input: 1000, output: 4000}}}}\n'


def _project(tmp_path: Path, name: str, backend: str, *, n: int = 4, steps: str | None = None,
             extra: str = "") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "renamed.py").write_text(RENAMED, encoding="utf-8")
    return write_pipeline(folder, backend, n=n, steps=steps, extra=PLUGINS + extra)


def _same(summary: dict[str, Any]) -> dict[str, Any]:
    """What must be equal between an original and its renamed copy (names, paths and times left out; and
    the attempts, which count the Batch API's polls too)."""
    keep = ("status", "records", "calls", "cached", "tokens", "cost_usd")
    out = {k: summary.get(k) for k in keep}
    out["by_step"] = [{k: v for k, v in row.items()} for row in summary.get("by_step", [])]
    out["has_cache"] = "cache" in summary
    out["has_rate_limit"] = "rate_limit" in summary
    return out


# --- the local engine: offline, free, not cached -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "mylocal"])
def test_an_offline_free_backend_says_so_costs_nothing_and_is_not_cached(tmp_path: Path, backend: str) -> None:
    path = _project(tmp_path, backend, f"{{type: {backend}}}")
    stream = io.StringIO()
    summary = run_pipeline_file(path, reporter=PlainReporter(stream, interval=0))
    headline = stream.getvalue().splitlines()[0]
    assert f"backend {backend}, model {DEFAULT_MODEL} (embedded offline engine: deterministic replies, not GPT)" \
        in headline
    assert summary["status"] == "finished" and summary["cost_usd"] == 0
    assert all(row["priced"] for row in summary["by_step"])  # free, not "unpriced"
    assert "cache" not in summary and not (path.parent / ".oaipipe" / "cache").exists()
    assert "rate_limit" not in summary


def test_renamed_local_runs_exactly_like_local(tmp_path: Path) -> None:
    original = run_pipeline_file(_project(tmp_path, "a", "{type: local}", extra=LOCAL_PRICE))
    renamed = run_pipeline_file(_project(tmp_path, "b", "{type: mylocal}", extra=LOCAL_PRICE))
    assert original["cost_usd"] > 0  # the explicit price of the engine's label applies to both
    assert _same(renamed) == _same(original)


def test_renamed_local_resumes_like_local(tmp_path: Path) -> None:
    from oaipipe.resume import fingerprint_parts

    local = load_pipeline(_project(tmp_path, "a", "{type: local}"))
    mine = load_pipeline(_project(tmp_path, "b", "{type: mylocal}"))
    remote = load_pipeline(_project(tmp_path, "c", "{type: openai, base_url: 'http://127.0.0.1:9/v1'}"))
    # the offline engine answers differently from a model: its runs are told apart, whatever its name
    assert fingerprint_parts(mine)["backend"] == fingerprint_parts(local)["backend"]
    assert fingerprint_parts(remote)["backend"] != fingerprint_parts(local)["backend"]


def test_renamed_local_dry_runs_like_local(tmp_path: Path) -> None:
    original = run_pipeline_file(_project(tmp_path, "a", "{type: local}"), dry_run=True)["estimate"]
    renamed = run_pipeline_file(_project(tmp_path, "b", "{type: mylocal}"), dry_run=True)["estimate"]
    assert original["cost_usd"] == 0 and original["cost_usd_on_openai"] > 0
    assert renamed["cost_usd"] == 0 and renamed["cost_usd_on_openai"] == original["cost_usd_on_openai"]
    assert renamed["by_step"] == original["by_step"]
    assert "mylocal backend costs nothing" in renamed["note"]
    priced = [run_pipeline_file(_project(tmp_path, f"p{name}", f"{{type: {name}}}", extra=LOCAL_PRICE),
                                dry_run=True)["estimate"]["cost_usd"] for name in ("local", "mylocal")]
    assert priced[0] > 0 and priced[0] == priced[1]  # the explicit price of `local:<model>`


# --- the Batch API: batch prices, no client-side rate limits ---------------------------------------------


@pytest.mark.parametrize("backend", ["batch", "mybatch"])
def test_a_batched_backend_is_dry_run_at_the_batch_discount(tmp_path: Path, backend: str) -> None:
    block = "{type: %s, base_url: 'http://127.0.0.1:9/v1'}"
    batched = run_pipeline_file(_project(tmp_path, "b", block % backend), dry_run=True)["estimate"]
    full = run_pipeline_file(_project(tmp_path, "o", block % "openai"), dry_run=True)["estimate"]
    assert full["cost_usd"] > 0
    assert batched["cost_usd"] == pytest.approx(full["cost_usd"] / 2, abs=1e-6)
    assert batched["note"] == "priced at the Batch API discount (half price)"


def test_renamed_batch_runs_exactly_like_batch(tmp_path: Path, server) -> None:
    block = "{type: %s, base_url: '%s', concurrency: 64, poll_interval: 0.02, flush_after: 0.05}"
    original = run_pipeline_file(_project(tmp_path, "a", block % ("batch", server.base_url), extra=LOCAL_PRICE))
    renamed = run_pipeline_file(_project(tmp_path, "b", block % ("mybatch", server.base_url), extra=LOCAL_PRICE))
    assert original["status"] == "finished" and original["records"]["done"] == 4
    tokens = original["tokens"]
    assert original["cost_usd"] == pytest.approx((tokens["prompt"] * 1000 + tokens["completion"] * 4000) / 2e6)
    assert original["cache"]["writes"] == 4 and "rate_limit" not in original  # cached; the Batch API queues
    assert _same(renamed) == _same(original)
    assert renamed["cache"] == original["cache"] | {"dir": renamed["cache"]["dir"]}


# --- steps: sentiment fields and image exchanges -----------------------------------------------------------


@pytest.mark.parametrize("step", ["sentiment", "mood"])
def test_train_select_on_a_sentiment_field_checks_the_label(tmp_path: Path, step: str) -> None:
    steps = f'- {{type: {step}, analyzer: keyword, input: "{{text}}", output: feeling}}\n'
    bad = _project(tmp_path, "bad", "{type: local}", steps=steps, extra="train: {select: {feeling: great}}\n")
    with pytest.raises(ConfigError, match="'feeling' holds a sentiment label, and 'great' is not one"):
        load_pipeline(bad)
    good = _project(tmp_path, "good", "{type: local}", steps=steps, extra="train: {select: {feeling: positive}}\n")
    assert load_pipeline(good).steps[0].writes_sentiment


@pytest.mark.parametrize("step", ["describe_image", "look"])
def test_training_leaves_out_the_exchanges_of_a_step_that_sends_images(tmp_path: Path, step: str) -> None:
    from oaipipe.training import build_dataset

    (tmp_path / "renamed.py").write_text(RENAMED, encoding="utf-8")
    host = load_pipeline(write_pipeline(tmp_path, "{type: local}", n=1, extra=PLUGINS)).host
    lines = [{"run_id": "r", "record_id": "1", "step": "ask:reply", "messages": [
                 {"role": "user", "content": "Hi", "sentiment": None},
                 {"role": "assistant", "content": "Hello!", "sentiment": None}]},
             {"run_id": "r", "record_id": "1", "step": f"{step}:caption", "messages": [
                 {"role": "user", "content": "What's in this image? [image: a.png]", "sentiment": None},
                 {"role": "assistant", "content": "A red mug.", "sentiment": None}]}]
    data = tmp_path / "dialogue.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    rows = build_dataset(data, host=host).train
    assert [r["messages"][-1]["content"] for r in rows] == ["Hello!"]
    asked = build_dataset(data, step="caption", host=host).train  # unless `step:` names them
    assert [r["messages"][-1]["content"] for r in asked] == ["A red mug."]


# --- the meta-test: no name checks outside the plugin that owns the name -----------------------------------


def _builtin_names() -> dict[str, str]:
    """Built-in plugin name -> the module (under oaipipe/builtin/) that registers it."""
    from oaipipe.plugins import PluginHost

    owners: dict[str, str] = {}
    for kind in PluginHost(entry_points=False).registry.values():
        for name, registration in kind.items():
            owners.setdefault(name, registration.cls.__module__.rsplit(".", 1)[-1])
    return owners


def _name_checks(names: list[str]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(a comparison of a plugin's name or type with one of ``names``, a model id tested for one as prefix)."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    quoted = rf"""["'](?:{alternatives})["']"""
    subject = r"""(?:\.name|\btype|\[["']type["']\]|\.get\(["']type["']\)|\.backend|\.step|\.trainer)"""
    comparison = re.compile(
        rf"""{subject}\s*(?:==|!=|\bin\b|\bnot in\b)\s*[\(\[\{{]?\s*{quoted}"""  # x.name == "batch"; in ("batch",
        rf"""|{quoted}\s*(?:==|!=)\s*\S*{subject}"""  # "batch" == x.name
        rf"""|{subject}\S*\.startswith\(\s*\(?\s*{quoted}"""  # x.name.startswith("local")
    )
    model_prefix = re.compile(rf"""\bmodel\w*\.startswith\(\s*\(?\s*["'](?:{alternatives})""")
    return comparison, model_prefix


def test_no_core_module_compares_a_plugin_name() -> None:
    """Outside the built-in module that registers a name, nothing compares a plugin's name or type with it;
    model ids are told apart by the engine that labels them (``oaipipe/engine``), nowhere else."""
    names = _builtin_names()
    comparison, model_prefix = _name_checks(list(names))
    found = []
    for path in sorted((REPO / "oaipipe").rglob("*.py")):
        rel = path.relative_to(REPO / "oaipipe")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            for match in comparison.finditer(code):
                named = {names[x] for x in re.findall(r"""["']([^"']+)["']""", match.group(0)) if x in names}
                if not (rel.parts[0] == "builtin" and path.stem in named):
                    found.append(f"oaipipe/{rel}:{n}: {line.strip()}")
            if model_prefix.search(code) and rel.parts[0] != "engine":
                found.append(f"oaipipe/{rel}:{n}: {line.strip()}")
    assert not found, "ask a capability (oaipipe/base.py) instead of comparing plugin names:\n" + "\n".join(found)


def test_the_meta_test_finds_a_name_check() -> None:
    """The patterns above are not vacuous: they catch every shape the core used to have."""
    names = _builtin_names()
    assert {"local", "batch", "sentiment", "describe_image"} <= set(names)
    comparison, model_prefix = _name_checks(list(names))
    for line in ('batch = self.pipeline.backend.name == "batch"', 'if step.name == "sentiment":',
                 'elif response.backend != "local":', 'if quick and block.get("type") != "local":',
                 'if "local" == backend.name:', 'if backend.name in ("local", "batch"):'):
        assert comparison.search(line), line
    for line in ('if not model or model.startswith("local"):',
                 'lookup(request.model if request.model.startswith(("local:", "ft:")) else model)'):
        assert model_prefix.search(line), line
    assert not comparison.search('if part.get("type") == "image_url":')

"""--dry-run: records, tokens and cost estimated from the rendered requests; nothing is called or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _scale_util import write_pipeline

from oaipipe.cli import main
from oaipipe.models_table import DEFAULT_MODEL
from oaipipe.pricing import PriceTable
from oaipipe.runner import run_pipeline_file
from oaipipe.tokens import count_message_tokens


def _expected_prompt_tokens(n: int) -> int:
    total = 0
    for i in range(1, n + 1):
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"Reply to: review number {i}: it was fine"}]
        total += count_message_tokens(messages, DEFAULT_MODEL)
    return total


def test_dry_run_calls_nothing_and_estimates_tokens_and_cost(tmp_path: Path, server, capsys) -> None:
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}'}}", n=7)
    assert main(["run", str(path), "--dry-run", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert server.stats()["requests"] == 0
    assert summary["status"] == "dry-run" and summary["calls"] == 0
    assert summary["records"]["total"] == 7
    est = summary["estimate"]
    assert est["calls"] == 7
    assert est["prompt_tokens"] == _expected_prompt_tokens(7)
    assert est["completion_tokens"] == 7 * est["completion_tokens_per_call"]
    price = PriceTable().lookup(DEFAULT_MODEL)  # the pipeline names no model
    assert est["cost_usd"] == pytest.approx(price.cost(est["prompt_tokens"], est["completion_tokens"]), abs=1e-6)
    assert est["by_step"][0]["step"] == "ask:reply"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
    assert not (tmp_path / ".oaipipe").exists()
    # the printed form
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "7 records would be processed; no call was made" in out
    assert f"{est['prompt_tokens']} in" in out
    assert f"step ask:reply ({DEFAULT_MODEL}): 7 calls" in out
    assert server.stats()["requests"] == 0


def test_dry_run_uses_max_tokens_limit_and_price_overrides(tmp_path: Path, server) -> None:
    steps = '- {type: ask, system: "Be brief.", prompt: "Reply to: {text}", output: reply, max_tokens: 20}\n'
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}'}}", n=9, steps=steps,
                          extra=f"prices: {{{DEFAULT_MODEL}: {{input: 1000, output: 2000}}}}\n")
    summary = run_pipeline_file(path, dry_run=True, limit=4)
    est = summary["estimate"]
    assert summary["records"]["total"] == 4
    assert est["completion_tokens"] == 4 * 20
    assert est["prompt_tokens"] == _expected_prompt_tokens(4)
    assert est["cost_usd"] == pytest.approx((est["prompt_tokens"] * 1000 + 80 * 2000) / 1e6)
    assert server.stats()["requests"] == 0


def test_dry_run_of_a_finished_pipeline_still_estimates(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=3)
    assert run_pipeline_file(path)["status"] == "finished"
    summary = run_pipeline_file(path, dry_run=True)
    assert summary["status"] == "dry-run" and summary["records"]["total"] == 3
    est = summary["estimate"]
    assert est["cost_usd"] == 0 and est["cost_usd_on_openai"] > 0  # the local engine is free
    assert "local backend costs nothing" in est["note"]
    assert est["by_step"][0]["cost_usd"] == 0 and est["by_step"][0]["cost_usd_on_openai"] > 0


def test_dry_run_counts_records_that_would_fail(tmp_path: Path, capsys) -> None:
    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n{not json\n{"text": "bye"}\n', encoding="utf-8")
    path = tmp_path / "p.yaml"
    path.write_text("name: d\nbackend: {type: local}\nsource: {type: jsonl, path: in.jsonl}\n"
                    "steps:\n  - {type: ask, prompt: '{text}', output: reply}\n", encoding="utf-8")
    summary = run_pipeline_file(path, dry_run=True)
    assert summary["records"] == {"total": 3, "would_fail": 1}
    assert summary["estimate"]["calls"] == 2
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 records would fail" in out and "invalid JSON" in out


def _image_pipeline(tmp_path: Path, model: str) -> Path:
    from PIL import Image

    # 512x512: sent as is (larger images are scaled down by the step before the rules apply)
    Image.new("RGB", (512, 512), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "in.jsonl").write_text('{"image": "red.png"}\n{"image": "red.png"}\n', encoding="utf-8")
    path = tmp_path / f"p-{model}.yaml"
    path.write_text("name: img\nbackend: {type: local}\nsource: {type: jsonl, path: in.jsonl}\nsteps:\n"
                    f"  - {{type: describe_image, image: '{{image}}', detail: high, model: {model}, output: d}}\n",
                    encoding="utf-8")
    return path


def test_dry_run_counts_images_by_the_models_own_rule(tmp_path: Path) -> None:
    def prompt_tokens(model: str) -> int:
        summary = run_pipeline_file(_image_pipeline(tmp_path, model), dry_run=True)
        assert summary["records"] == {"total": 2, "would_fail": 0}
        return summary["estimate"]["prompt_tokens"]

    gpt_4o = prompt_tokens("gpt-4o")
    # same tokenizer (o200k_base) and text: the difference is the image rule alone, per image
    assert prompt_tokens("gpt-4o-mini") - gpt_4o == 2 * ((2833 + 5667) - (85 + 170))
    assert prompt_tokens("gpt-4.1-mini") - gpt_4o == 2 * (round(16 * 16 * 1.62) - (85 + 170))


def test_dry_run_prices_the_local_engine_like_the_real_run(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=3)
    path.write_text(path.read_text() + f'prices: {{"local:{DEFAULT_MODEL}": {{input: 1000, output: 4000}}}}\n')
    est = run_pipeline_file(path, dry_run=True)["estimate"]
    assert est["cost_usd"] > 0  # the override for the engine's own label applies, as in a real run
    real = run_pipeline_file(path)
    assert real["cost_usd"] > 0


def test_a_dry_run_names_the_reasoning_models_whose_reasoning_tokens_it_cannot_count(tmp_path: Path, capsys) -> None:
    # reasoning tokens are billed as output and no offline count knows them: a call without max_tokens (which
    # caps reasoning and reply together) to a reasoning model is named, a capped one or a plain model is not
    steps = ('- {type: ask, prompt: "Reply to: {text}", output: a}\n'
             '- {type: ask, prompt: "Again: {text}", output: b, model: gpt-5-mini, max_tokens: 400}\n'
             '- {type: ask, prompt: "Once more: {text}", output: c, model: gpt-4o-mini}\n')
    path = write_pipeline(tmp_path, "{type: local}", n=2, steps=steps)
    assert main(["run", str(path), "--dry-run", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)["estimate"]
    assert est["reasoning_not_counted"] == [DEFAULT_MODEL]  # gpt-6-luna reasons by default
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"note: {DEFAULT_MODEL}: reasoning model; its reasoning tokens, billed as output, are not in this estimate" in out
    plain = write_pipeline(tmp_path / "plain", "{type: local, model: gpt-4o-mini}", n=2)
    assert "reasoning_not_counted" not in run_pipeline_file(plain, dry_run=True)["estimate"]


def test_a_call_over_its_models_context_window_fails_its_record_in_the_dry_run(tmp_path: Path, server) -> None:
    # the API refuses a call asking for more than the context window (prompt + max_tokens) with a 400: the dry
    # run counts its record as one that would fail, and bills nothing for it
    texts = ["fine", "great mug", "the handle broke on day two and the shop never answered my mails " * 3] * 2
    for folder in (tmp_path, tmp_path / "local"):
        folder.mkdir(exist_ok=True)
        (folder / "r.csv").write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)),
                                      encoding="utf-8")
    steps = '- {type: ask, prompt: "Reply to: {text}", output: a, model: small-window, max_tokens: 20}\n'
    extra = "models:\n  small-window: {context: 60, input: 1.0, output: 1.0}\n"
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}'}}", steps=steps, extra=extra)
    summary = run_pipeline_file(path, dry_run=True)
    prompts = [count_message_tokens([{"role": "user", "content": f"Reply to: {t}"}], "small-window") for t in texts]
    fits = [p for p in prompts if p + 20 <= 60]
    assert len(fits) == 4  # the long review does not fit a window of 60 with max_tokens 20
    assert summary["records"]["would_fail"] == 2
    assert "small-window's context window is 60 tokens; this call asks for" in summary["record_errors"][0]
    est = summary["estimate"]
    assert est["calls"] == 4 and est["prompt_tokens"] == sum(fits)  # the refused calls cost nothing
    assert server.stats()["requests"] == 0
    local = write_pipeline(tmp_path / "local", "{type: local}", steps=steps, extra=extra)
    assert run_pipeline_file(local, dry_run=True)["records"]["would_fail"] == 0  # the engine has no window


# --- found by the mutation run (docs/mutation.md) ------------------------------------------------------


def test_dry_run_counts_each_model_with_its_own_tokenizer(tmp_path: Path) -> None:
    text = "Überraschend günstige Kaffeetassen — 日本語のレビュー ✓"
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    messages = [{"role": "user", "content": text}]
    # the same text is 30 tokens in cl100k_base (gpt-3.5-turbo) and 22 in o200k_base (gpt-4o-mini)
    assert count_message_tokens(messages, "gpt-3.5-turbo") != count_message_tokens(messages, "gpt-4o-mini")
    for model in ("gpt-3.5-turbo", "gpt-4o-mini"):
        path = tmp_path / f"{model}.yaml"
        path.write_text(f"name: tok\nbackend: {{type: openai, base_url: 'http://127.0.0.1:9/v1', model: {model}}}\n"
                        "source: {type: jsonl, path: in.jsonl}\n"
                        "steps:\n  - {type: ask, prompt: '{text}', output: reply}\n", encoding="utf-8")
        est = run_pipeline_file(path, dry_run=True)["estimate"]
        assert est["prompt_tokens"] == count_message_tokens(messages, model), model


def test_dry_run_says_so_before_anything_else(tmp_path: Path, capsys) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=2)
    assert main(["run", str(path), "--dry-run"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("oaipipe: t: ") and err[0].endswith(" (dry run: nothing is called)"), err


def test_a_free_backend_that_answers_as_an_openai_model_costs_nothing_unless_priced() -> None:
    # a plugin backend that is not `priced` and keeps the model id (Backend.model_label's default):
    # its calls cost nothing, though the id has an OpenAI list price; an explicit `prices:` entry gives one
    import asyncio
    from types import SimpleNamespace

    from oaipipe.dryrun import _Counter
    from oaipipe.types import ChatRequest

    backend = SimpleNamespace(priced=False, offline=False, batched=False, options=SimpleNamespace(),
                              model_label=lambda model: model)
    request = ChatRequest(messages=[{"role": "user", "content": "hello there"}], model="gpt-4o-mini",
                          max_tokens=10, step="ask:reply")
    for prices, local_cost in ((PriceTable(), 0.0),
                               (PriceTable({"gpt-4o-mini": {"input": 1e6, "output": 1e6}}), None)):
        counter = _Counter(prices, 150, backend)  # type: ignore[arg-type]
        asyncio.run(counter.call(request))
        asyncio.run(counter.call(request))  # two calls: the row sums them
        row = counter.by_step[("ask:reply", "gpt-4o-mini")]
        assert row["cost_usd"] > 0, row  # what the calls would cost on OpenAI
        expected = row["prompt_tokens"] + row["completion_tokens"] if local_cost is None else local_cost
        assert row["local_cost"] == pytest.approx(expected), row


def test_a_model_without_a_price_costs_nothing_in_the_estimate_and_is_named_unpriced() -> None:
    import asyncio
    from types import SimpleNamespace

    from oaipipe.dryrun import _Counter
    from oaipipe.types import ChatRequest

    backend = SimpleNamespace(priced=True, offline=False, batched=False, options=SimpleNamespace(),
                              model_label=lambda model: model)
    counter = _Counter(PriceTable(), 150, backend)  # type: ignore[arg-type]
    for model in ("no-such-model", "gpt-4o-mini"):
        asyncio.run(counter.call(ChatRequest(messages=[{"role": "user", "content": "hi"}], model=model, step="s")))
    assert counter.by_step[("s", "no-such-model")]["cost_usd"] == 0.0
    assert counter.by_step[("s", "gpt-4o-mini")]["cost_usd"] > 0
    assert counter.unpriced == {"no-such-model"}


def test_at_the_priority_tier_a_model_without_priority_prices_is_unpriced() -> None:
    import asyncio
    from types import SimpleNamespace

    from oaipipe.dryrun import _Counter
    from oaipipe.types import ChatRequest

    backend = SimpleNamespace(priced=True, offline=False, batched=False, options=SimpleNamespace(tier="priority"),
                              model_label=lambda model: model)
    table = PriceTable({"plain": {"input": 1.0, "output": 2.0},
                        "fast": {"input": 1.0, "output": 2.0, "priority_input": 3.0, "priority_output": 6.0}})
    counter = _Counter(table, 150, backend)  # type: ignore[arg-type]
    for model in ("plain", "fast"):
        asyncio.run(counter.call(ChatRequest(messages=[{"role": "user", "content": "hi"}], model=model, step="s",
                                             max_tokens=1_000_000)))
    assert counter.unpriced == {"plain"} and counter.by_step[("s", "plain")]["cost_usd"] == 0.0
    assert counter.by_step[("s", "fast")]["cost_usd"] == pytest.approx(
        6.0 + counter.by_step[("s", "fast")]["prompt_tokens"] * 3.0 / 1e6)


def test_a_dry_run_answers_a_json_request_with_an_empty_object_and_any_other_with_nothing() -> None:
    # so that a step asking for JSON (a json_schema or json_object response_format) goes on as in a real run
    import asyncio
    from types import SimpleNamespace

    from oaipipe.dryrun import _Counter
    from oaipipe.types import ChatRequest, Usage

    backend = SimpleNamespace(priced=True, offline=False, batched=False, options=SimpleNamespace(), model_label=lambda m: m)
    counter = _Counter(PriceTable(), 150, backend)  # type: ignore[arg-type]

    def reply(response_format: dict | None) -> tuple[str, object]:
        request = ChatRequest(messages=[{"role": "user", "content": "hi"}], model="gpt-4o-mini",
                              response_format=response_format)
        response = asyncio.run(counter.call(request))
        assert response.backend == "dry-run" and response.model == "gpt-4o-mini"
        prompt = count_message_tokens(request.messages, "gpt-4o-mini")
        assert response.usage == Usage(prompt, 150, prompt + 150)  # the request's tokens, the default reply's
        return response.text, response.parsed

    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert reply(schema) == ("{}", {})
    assert reply({"type": "json_object"}) == ("{}", {})
    assert reply({"type": "text"}) == ("", None)
    assert reply(None) == ("", None)


def test_a_dry_run_summary_names_its_pipeline_counts_only_its_shard_and_goes_to_the_reporter(tmp_path: Path) -> None:
    import yaml

    from oaipipe.progress import Reporter

    class Recorder(Reporter):
        def __init__(self) -> None:
            self.finished: list[dict] = []

        def finish(self, summary: dict) -> None:
            self.finished.append(summary)

    path = write_pipeline(tmp_path, "{type: local}", n=20)
    recorder = Recorder()
    summaries = [run_pipeline_file(path, dry_run=True, shard=(i, 3), reporter=recorder) for i in range(3)]
    name = yaml.safe_load(path.read_text(encoding="utf-8"))["name"]
    assert all((s["pipeline"], s["status"], s["backend"]) == (name, "dry-run", "local") for s in summaries)
    totals = [s["records"]["total"] for s in summaries]
    assert sum(totals) == 20 and max(totals) < 20  # each shard's own records, together the whole input
    assert recorder.finished == summaries  # a reporter (the Python API's reporter=) gets each summary


def test_a_models_block_can_say_a_model_reasons_and_the_dry_run_names_it(tmp_path: Path) -> None:
    steps = '- {type: ask, prompt: "Reply to: {text}", output: a, model: house-reasoner}\n'
    extra = "models:\n  house-reasoner: {reasoning: true, input: 1.0, output: 2.0}\n"
    path = write_pipeline(tmp_path, "{type: local}", n=2, steps=steps, extra=extra)
    assert run_pipeline_file(path, dry_run=True)["estimate"]["reasoning_not_counted"] == ["house-reasoner"]
    plain = write_pipeline(tmp_path / "plain", "{type: local}", n=2, steps=steps, extra=extra.replace("true", "false"))
    assert "reasoning_not_counted" not in run_pipeline_file(plain, dry_run=True)["estimate"]


def test_the_context_check_allows_the_window_itself_and_refuses_a_token_more_saying_how_many() -> None:
    from oaipipe.dryrun import _check_context
    from oaipipe.errors import BadRequestError
    from oaipipe.models_table import ModelInfo
    from oaipipe.types import ChatRequest

    window = ModelInfo("chat", context=1000)
    capped = ChatRequest(messages=[], model="m", max_tokens=200)
    uncapped = ChatRequest(messages=[], model="m")
    _check_context(capped, 800, window)  # 800 + 200: exactly the window, allowed
    _check_context(uncapped, 1000, window)  # no max_tokens: the prompt alone counts
    _check_context(uncapped, 10**6, ModelInfo("chat"))  # a model whose window is not known passes
    _check_context(uncapped, 10**6, None)
    with pytest.raises(BadRequestError) as over:
        _check_context(capped, 801, window)
    assert over.value.status == 400
    assert over.value.message == ("m's context window is 1,000 tokens; this call asks for 1,001 (801 in the messages, "
                                  "200 in the completion): the API refuses it (context_length_exceeded)")
    assert over.value.hint == ("shorten the input (or max_tokens), or give this step a model with a larger context "
                               "window")
    with pytest.raises(BadRequestError) as alone:
        _check_context(uncapped, 1001, window)
    assert "this call asks for 1,001 (1,001 in the messages): the API" in alone.value.message

"""Price lookups: defaults, prefixes, fine-tuned ids, local models and explicit overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _scale_util import write_pipeline

from oaipipe.models_table import DEFAULT_MODEL
from oaipipe.pricing import Price, PriceTable, check_budget
from oaipipe.runner import run_pipeline_file


def test_defaults_price_local_models_at_zero_and_unpriced() -> None:
    table = PriceTable()
    for model in ("local:gpt-4o-mini", "local", "ft:gpt-4o-mini:local:x:1"):
        price = table.lookup(model)
        assert price.known is False and price.cost(1000, 1000) == 0
    assert table.lookup("gpt-4o-mini-2024-07-18").input == pytest.approx(0.15)
    assert table.lookup("ft:gpt-4o-mini:org::abc").input == pytest.approx(0.30)


def test_an_explicit_override_for_a_local_model_wins() -> None:
    table = PriceTable({"local:gpt-4o-mini": {"input": 1000, "output": 4000},
                        "ft:gpt-4o-mini:local:x:1": {"input": 1, "output": 2}})
    price = table.lookup("local:gpt-4o-mini")
    assert price.known is True and price.input == 1000 and price.output == 4000
    assert price.cost(1000, 1000) == pytest.approx(5.0)
    ft = table.lookup("ft:gpt-4o-mini:local:x:1")
    assert ft.known is True and (ft.input, ft.output) == (1, 2)
    # only the exact id: other local models stay free
    assert table.lookup("local:gpt-4o").known is False


def test_oaipipe_prices_file_overrides_local_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"local:gpt-4o-mini": {"input": 10, "output": 20}}))
    monkeypatch.setenv("OAIPIPE_PRICES", str(prices))
    price = PriceTable().lookup("local:gpt-4o-mini")
    assert price.known is True and (price.input, price.output) == (10, 20)


def test_max_cost_can_be_tried_offline_on_the_local_backend(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=40,
                          extra=f'prices: {{"local:{DEFAULT_MODEL}": {{input: 1000, output: 4000}}}}\n')
    summary = run_pipeline_file(path, max_cost=0.5)
    assert summary["status"] == "budget-reached"
    assert 0 < summary["records"]["done"] < 40


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]", "{\"m\": {\"input\": \"cheap\"}}"])
def test_an_unreadable_oaipipe_prices_file_says_what_to_fix(tmp_path: Path, monkeypatch, content) -> None:
    from oaipipe.errors import ConfigError

    prices = tmp_path / "prices.json"
    if content is not None:
        prices.write_text(content, encoding="utf-8")
    monkeypatch.setenv("OAIPIPE_PRICES", str(prices))
    with pytest.raises(ConfigError, match="OAIPIPE_PRICES") as info:
        PriceTable()
    assert str(prices) in str(info.value) and "unset" in str(info.value)


# --- which model a call is priced as: the reported one, else the requested one ------------------------


def test_a_call_is_priced_by_the_reported_model_else_by_the_requested_one() -> None:
    table = PriceTable()
    luna, mini, big = (table.lookup(m) for m in ("gpt-6-luna", "gpt-4o-mini", "gpt-4o"))
    # OpenAI reports a dated snapshot: priced by its longest known prefix
    snapshot = table.lookup("gpt-4o-mini-2024-07-18", requested="gpt-4o-mini")
    assert snapshot.known and (snapshot.input, snapshot.output) == (mini.input, mini.output)
    # the reported model wins when the table knows it (the server says what answered)
    other = table.lookup("gpt-4o-2024-08-06", requested="gpt-4o-mini")
    assert (other.input, other.output) == (big.input, big.output)
    # a server's own label (oaipipe serve: local:<model>, a proxy's deployment name): the requested model
    for label in ("local:gpt-6-luna", "my-azure-deployment"):
        served = table.lookup(label, requested="gpt-6-luna")
        assert served.known and served.model == label and (served.input, served.output) == (luna.input, luna.output)
    # neither known: unpriced, as before; a free backend stays free; an engine label asked for is no price
    assert not table.lookup("local:my-own-model", requested="my-own-model").known
    assert not table.lookup("local:gpt-6-luna", requested="gpt-6-luna", priced=False).known
    assert not table.lookup("local:gpt-6-luna", requested="local:gpt-6-luna").known


def test_a_run_against_serve_is_priced_as_the_model_it_asked_for(tmp_path, server, capsys) -> None:
    from oaipipe.cli import main

    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}', model: gpt-6-luna}}", n=2)
    assert main(["run", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    (row,) = summary["by_step"]
    assert row["model"] == "local:gpt-6-luna" and row["priced"] is True  # the label serve reports back
    price = PriceTable().lookup("gpt-6-luna")
    want = (row["prompt_tokens"] * price.input + row["completion_tokens"] * price.output) / 1_000_000
    assert summary["cost_usd"] == pytest.approx(want, rel=1e-3) and summary["cost_usd"] > 0
    assert main(["run", str(path), "--fresh", "--no-cache"]) == 0  # the line says so too
    out = capsys.readouterr().out
    assert "no price known" not in out

# --- found by the mutation run (docs/mutation.md) ------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", 0, -1, float("nan"), float("inf"), True, None])
def test_a_bad_budget_is_refused_naming_the_option_and_the_fix(value: object) -> None:
    with pytest.raises(ValueError) as err:
        check_budget(value)
    assert str(err.value) == f"--max-cost must be a finite number of USD > 0 (e.g. --max-cost 5), not {value!r}"
    assert check_budget("2.5") == 2.5 and check_budget(1) == 1.0


def test_the_prompt_cache_saving_is_the_input_price_minus_the_cached_price() -> None:
    price = Price("m", input=1.0, cached_input=0.25, output=2.0)
    assert price.cache_saving(1_000_000) == 0.75  # exactly: per 1M tokens
    assert price.cache_saving(1) == pytest.approx(0.75e-6)
    assert price.cache_saving(1_000_000, batch=True) == pytest.approx(0.375)  # half price, half the saving
    assert price.cache_saving(0) == 0.0 and price.cache_saving(-5) == 0.0
    assert Price("m", input=1.0, output=2.0).cache_saving(1_000_000) == 0.0  # no cached price: nothing saved


def test_a_call_costs_its_tokens_at_the_tier_rates_with_cached_tokens_at_the_cached_price() -> None:
    price = Price("m", input=2.0, cached_input=0.5, output=8.0)
    assert price.cost(1_000_000, 0) == 2.0  # exactly: USD per 1M tokens
    assert price.cost(0, 1_000_000) == 8.0
    assert price.cost(1_000_000, 1_000_000, batch=True) == 5.0  # the Batch API: half of 2 + 8
    assert price.cost(1_000_000, 1_000_000, batch=True, tier="standard") == 10.0  # the tier wins over batch
    # 400k of the 1M prompt tokens from the prompt cache: 600k at 2.0 + 400k at 0.5
    assert price.cost(1_000_000, 0, cached_tokens=400_000) == pytest.approx(1.4)
    assert price.cost(100, 0, cached_tokens=500) == pytest.approx(100 * 0.5 / 1e6)  # never more than the prompt


def test_a_lookup_names_the_model_it_was_asked_for_known_or_not() -> None:
    table = PriceTable({"my-model": {"input": 1.0, "output": 2.0}})
    for model, priced in (("my-model", True), ("my-model", False), ("gpt-4o-mini", False),
                          ("no-such-model", True), ("local:gpt-4o-mini", True)):
        price = table.lookup(model, priced=priced)
        assert price.model == model, (model, priced)
    assert table.lookup("my-model", priced=False).known is True  # an explicit price: also for a free backend
    assert table.lookup("gpt-4o-mini", priced=False).known is False
    assert table.lookup("no-such-model").known is False and table.lookup("").known is False


def test_a_call_priced_as_the_requested_model_gets_its_explicit_price_whole() -> None:
    # the reported id is unknown (a proxy's label): the explicit price of the model asked for applies,
    # as a plain model's price (its cached and priority prices), not as a fine-tuned model's
    entry = {"input": 1.0, "cached_input": 0.25, "output": 4.0, "priority_input": 2.0, "priority_output": 8.0}
    table = PriceTable({"my-model": entry})
    price = table.lookup("deployment-7", requested="my-model")
    assert (price.model, price.known) == ("deployment-7", True)
    assert (price.input, price.cached_input, price.output) == (1.0, 0.25, 4.0)
    assert (price.priority_input, price.priority_output) == (2.0, 8.0)


def test_an_id_with_a_colon_that_is_not_a_fine_tune_is_priced_by_its_longest_known_prefix() -> None:
    table = PriceTable()
    assert table.lookup("gpt-4o-mini:eu-west").input == table.lookup("gpt-4o-mini").input > 0

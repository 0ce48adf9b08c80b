"""Price lookups: defaults, prefixes, fine-tuned ids, local models and explicit overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _scale_util import write_pipeline

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
                          extra='prices: {"local:gpt-4o-mini": {input: 1000, output: 4000}}\n')
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

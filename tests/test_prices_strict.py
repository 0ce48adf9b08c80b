"""Prices are validated wherever they come from, --max-cost is a real budget, and run files are strict JSON.

Every price (the built-in table, the ``OAIPIPE_PRICES`` file, a pipeline's ``prices:``) must be a finite
number >= 0, and a model priced from scratch must name both ``input`` and ``output``: a NaN price made
``--max-cost`` a no-op and put a literal ``NaN`` (not JSON) into summary.json; a missing ``output`` was
billed as free.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from _scale_util import write_pipeline

from oaipipe.cli import main
from oaipipe.errors import ConfigError
from oaipipe.models_table import DEFAULT_MODEL
from oaipipe.pricing import PriceTable

BAD_VALUES = [float("nan"), float("inf"), float("-inf"), -0.5]


def _strict_json(text: str) -> Any:
    """json.loads that refuses NaN/Infinity, as every other JSON parser does."""
    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", BAD_VALUES, ids=["nan", "inf", "-inf", "negative"])
@pytest.mark.parametrize("field", ["input", "output", "cached_input", "training"])
def test_a_pipeline_price_that_is_not_a_finite_non_negative_number_is_refused(value: float, field: str) -> None:
    entry = {"input": 1.0, "output": 2.0, field: value}
    with pytest.raises(ConfigError) as info:
        PriceTable({"gpt-4o-mini": entry})
    text = str(info.value)
    assert f"prices.gpt-4o-mini.{field}" in text
    assert "finite" in text and ">= 0" in text


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0], ids=["nan", "inf", "negative"])
def test_the_oaipipe_prices_file_is_checked_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         value: float) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4o": {"input": value, "output": 1}}), encoding="utf-8")  # NaN/Infinity
    monkeypatch.setenv("OAIPIPE_PRICES", str(prices))
    with pytest.raises(ConfigError) as info:
        PriceTable()
    text = str(info.value)
    assert str(prices) in text and "gpt-4o.input" in text and "finite" in text


def test_the_built_in_table_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import oaipipe.pricing as pricing

    monkeypatch.setitem(pricing.DEFAULT_PRICES, "gpt-broken", {"input": float("nan"), "output": 1.0})
    with pytest.raises(ConfigError, match=r"built-in price table.*gpt-broken\.input"):
        PriceTable()


def test_a_new_model_without_an_output_price_is_an_error_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        PriceTable({"my-model": {"input": 1.0}})
    text = str(info.value)
    assert "prices.my-model" in text and "output" in text
    assert "output: USD_PER_1M" in text  # the fix
    # a partial override of a model the table knows keeps the other field
    price = PriceTable({"gpt-4o-mini": {"input": 1.0}}).lookup("gpt-4o-mini")
    assert (price.input, price.output) == (1.0, pytest.approx(0.60))


def test_a_missing_output_in_the_prices_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("local:gpt-4o-mini: {input: 1000}\n", encoding="utf-8")
    monkeypatch.setenv("OAIPIPE_PRICES", str(prices))
    with pytest.raises(ConfigError) as info:
        PriceTable()
    assert str(prices) in str(info.value) and "output" in str(info.value)


def test_an_unknown_price_field_is_named_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"prices\.gpt-4o\.ouput.*did you mean 'output'"):
        PriceTable({"gpt-4o": {"input": 1.0, "ouput": 2.0}})


def test_validate_refuses_a_nan_price_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_pipeline(tmp_path, "{type: local}",
                          extra='prices:\n  "local:gpt-4o-mini": {input: .nan, output: 4000}\n')
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if ".nan" in text)
    assert f"{path}:{line}" in err and "prices.local:gpt-4o-mini.input" in err


def test_a_nan_price_can_no_longer_switch_off_max_cost(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The reported failure: a NaN price, then --max-cost never triggered and the whole run went ahead."""
    path = write_pipeline(tmp_path, "{type: local}", n=20,
                          extra=f'prices:\n  "local:{DEFAULT_MODEL}": {{input: .nan, output: 4000}}\n')
    assert main(["run", str(path), "-q", "--max-cost", "0.5"]) == 2
    assert "finite" in capsys.readouterr().err
    assert not (tmp_path / "out" / "records.jsonl").exists()  # refused before any record


@pytest.mark.parametrize("budget", ["nan", "inf", "0", "-1"])
def test_max_cost_must_be_a_finite_positive_number(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   budget: str) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=2)
    assert main(["run", str(path), "-q", f"--max-cost={budget}"]) == 2
    assert "--max-cost" in capsys.readouterr().err
    assert not (tmp_path / "out" / "records.jsonl").exists()


@pytest.mark.parametrize("budget", [".nan", ".inf", "0", "-1"])
def test_run_max_cost_in_the_pipeline_must_be_finite_and_positive(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  budget: str) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=2, extra=f"run: {{max_cost: {budget}}}\n")
    assert main(["validate", str(path)]) == 2
    assert "max_cost" in capsys.readouterr().err


def test_run_files_are_strict_json(tmp_path: Path) -> None:
    """summary.json and pipeline.json parse with a strict parser after a priced run that hit its budget."""
    path = write_pipeline(tmp_path, "{type: local}", n=30,
                          extra=f'prices: {{"local:{DEFAULT_MODEL}": {{input: 1000, output: 4000}}}}\n')
    assert main(["run", str(path), "-q", "--max-cost", "0.5"]) == 8
    run_dir = next((tmp_path / "runs" / "t").iterdir())
    summary = _strict_json((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "budget-reached" and math.isfinite(summary["cost_usd"])
    _strict_json((run_dir / "pipeline.json").read_text(encoding="utf-8"))


def test_the_json_writer_refuses_nan_and_leaves_the_old_file(tmp_path: Path) -> None:
    from oaipipe.fsutil import write_json_atomic

    target = tmp_path / "summary.json"
    write_json_atomic(target, {"cost_usd": 1.5})
    with pytest.raises(ValueError, match="JSON"):
        write_json_atomic(target, {"cost_usd": float("nan")})
    assert _strict_json(target.read_text(encoding="utf-8")) == {"cost_usd": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind

"""The validation report: one broken file per category (tests/data/training), tokens, epochs, price."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from oaipipe.cli import main
from oaipipe.pricing import PriceTable
from oaipipe.tokens import count_message_tokens
from oaipipe.training import CATEGORIES, default_epochs, token_limit_for, validate_file, validate_rows

DATA = Path(__file__).parent / "data" / "training"

BROKEN = [
    ("invalid_json.jsonl", "invalid_json", "supervised"),
    ("data_type.jsonl", "data_type", "supervised"),
    ("missing_messages_list.jsonl", "missing_messages_list", "supervised"),
    ("message_missing_key.jsonl", "message_missing_key", "supervised"),
    ("message_unrecognized_key.jsonl", "message_unrecognized_key", "supervised"),
    ("unrecognized_role.jsonl", "unrecognized_role", "supervised"),
    ("missing_content.jsonl", "missing_content", "supervised"),
    ("example_missing_assistant_message.jsonl", "example_missing_assistant_message", "supervised"),
    ("missing_preferred_output.jsonl", "missing_preferred_output", "dpo"),
    ("missing_non_preferred_output.jsonl", "missing_non_preferred_output", "dpo"),
    ("invalid_weight.jsonl", "invalid_weight", "supervised"),
    ("image_in_assistant_message.jsonl", "image_in_assistant_message", "supervised"),
    ("invalid_content_part.jsonl", "invalid_content_part", "supervised"),
]


@pytest.mark.parametrize(("name", "category", "method"), BROKEN)
def test_each_category_is_reported_at_its_line(name: str, category: str, method: str) -> None:
    report = validate_file(DATA / name)
    assert report.method == method
    assert not report.ok
    assert category in report.errors
    # the broken row is line 4; no other line is blamed
    for where in (w for ws in report.errors.values() for w in ws):
        assert where.startswith("line 4"), where
    text = report.to_text()
    assert category in text and CATEGORIES[category] in text and "NOT READY" in text


def test_every_category_has_a_broken_example_file() -> None:
    covered = {c for _, c, _ in BROKEN} | {"too_few_examples", "example_over_token_limit"}
    assert covered == set(CATEGORIES)
    assert (DATA / "too_few_examples.jsonl").exists() and (DATA / "example_over_token_limit.jsonl").exists()


def test_too_few_examples() -> None:
    report = validate_file(DATA / "too_few_examples.jsonl")
    assert list(report.errors) == ["too_few_examples"]
    assert report.n_examples == 5
    assert "at least 10" in report.errors["too_few_examples"][0]


def test_over_token_limit_with_an_explicit_limit() -> None:
    report = validate_file(DATA / "example_over_token_limit.jsonl", token_limit=1000)
    assert list(report.errors) == ["example_over_token_limit"]
    assert report.errors["example_over_token_limit"][0].startswith("line 4 (")
    # under the model's real limit (65,536 for gpt-4o-mini) the same file is fine
    assert validate_file(DATA / "example_over_token_limit.jsonl").ok


def test_over_the_real_gpt_4o_mini_limit(tmp_path: Path) -> None:
    rows = [(f"line {i}", {"messages": [{"role": "user", "content": f"q{i}"},
                                          {"role": "assistant", "content": f"a{i}"}]}) for i in range(11)]
    huge = " ".join(f"w{i}" for i in range(40_000))  # ~80k tokens
    rows.append(("line 12", {"messages": [{"role": "user", "content": huge}, {"role": "assistant", "content": "ok"}]}))
    report = validate_rows(rows, model="gpt-4o-mini")
    assert report.token_limit == 65_536
    assert list(report.errors) == ["example_over_token_limit"]
    assert report.errors["example_over_token_limit"][0].startswith("line 12")


def test_token_limit_table() -> None:
    assert token_limit_for("gpt-4o-mini") == 65_536
    assert token_limit_for("gpt-4o-mini-2024-07-18") == 65_536
    assert token_limit_for("ft:gpt-4o-mini:org::abc") == 65_536
    assert token_limit_for("gpt-3.5-turbo") == 16_385


@pytest.mark.parametrize(("n", "epochs"), [(1, 25), (3, 25), (5, 20), (10, 10), (12, 8), (34, 3), (100, 3),
                                           (8_333, 3), (8_334, 2), (12_501, 1), (30_000, 1)])
def test_default_epochs_follow_openais_rule(n: int, epochs: int) -> None:
    assert default_epochs(n) == epochs
    assert 1 <= default_epochs(n) <= 25


def test_valid_file_tokens_epochs_billed_price() -> None:
    report = validate_file(DATA / "valid_sft.jsonl", model="gpt-4o-mini")
    assert report.ok, report.to_text()
    rows = [json.loads(line) for line in (DATA / "valid_sft.jsonl").read_text().splitlines()]
    lengths = [count_message_tokens(r["messages"], "gpt-4o-mini") for r in rows]
    assert report.tokens["min"] == min(lengths) and report.tokens["max"] == max(lengths)
    assert report.tokens["total"] == sum(lengths)
    est = report.estimate
    assert est is not None
    assert est.n_epochs == 8  # 12 examples: 3 epochs would be 36 < 100 passes → 100 // 12
    assert est.billed_tokens == sum(lengths) * 8
    assert est.estimated_cost_usd == pytest.approx(sum(lengths) * 8 * 3.00 / 1_000_000)
    assert report.to_dict()["per_message_overhead"] == 3
    assert report.tokenizer in ("bpe-openai", "tiktoken")


def test_explicit_epochs_and_price_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = PriceTable({"gpt-4o-mini": {"training": 10.0}})
    report = validate_file(DATA / "valid_sft.jsonl", n_epochs=2, prices=table)
    assert report.estimate and report.estimate.n_epochs == 2 and report.estimate.epochs_source == "hyperparameters"
    assert report.estimate.estimated_cost_usd == pytest.approx(report.estimate.billed_tokens * 10 / 1_000_000)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4o-mini": {"training": 1.0}}))
    monkeypatch.setenv("OAIPIPE_PRICES", str(prices))
    report = validate_file(DATA / "valid_sft.jsonl")
    assert report.estimate and report.estimate.price_per_1m == 1.0


def test_unknown_model_has_no_price() -> None:
    report = validate_file(DATA / "valid_sft.jsonl", model="my-own-model")
    assert report.ok and report.estimate and report.estimate.estimated_cost_usd is None
    assert "no training price known" in report.to_text()


def test_dpo_file_counts_all_outputs() -> None:
    report = validate_file(DATA / "valid_dpo.jsonl")
    assert report.ok and report.method == "dpo"
    row = json.loads((DATA / "valid_dpo.jsonl").read_text().splitlines()[0])
    convo = row["input"]["messages"] + row["preferred_output"] + row["non_preferred_output"]
    assert report.tokens["min"] <= count_message_tokens(convo) <= report.tokens["max"]


def test_validating_sft_rows_as_dpo_reports_them() -> None:
    report = validate_file(DATA / "valid_sft.jsonl", method="dpo")
    assert {"missing_messages_list", "missing_preferred_output", "missing_non_preferred_output"} <= set(report.errors)


def test_cli_validate_text_json_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "validate", str(DATA / "valid_sft.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "OK: ready to train" in out and "epochs: 8" in out and "estimated price" in out
    assert main(["dataset", "validate", str(DATA / "missing_content.jsonl"), "--json"]) == 6
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["errors"]["missing_content"]["count"] == 1
    assert data["errors"]["missing_content"]["where"] == ["line 4"]
    assert main(["dataset", "validate", str(DATA / "nope.jsonl")]) == 6
    assert "dataset file not found" in capsys.readouterr().err


def test_cli_max_tokens_option(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dataset", "validate", str(DATA / "example_over_token_limit.jsonl"), "--max-tokens-per-example", "1000"])
    assert code == 6
    assert "example_over_token_limit: 1" in capsys.readouterr().out


def test_validating_a_csv_points_at_dataset_build(tmp_path: Path) -> None:
    from oaipipe.errors import DatasetError

    csv = tmp_path / "qa.csv"
    csv.write_text("prompt,completion\na,b\n")
    with pytest.raises(DatasetError) as err:
        validate_file(csv)
    assert "oaipipe dataset build" in str(err.value)


def _sft_line(i: int, system: bool = False) -> str:
    messages = [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}."}]
    if system:
        messages.insert(0, {"role": "system", "content": "Be brief."})
    return json.dumps({"messages": messages})


def test_an_unparseable_line_is_an_error_not_an_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join([_sft_line(i) for i in range(10)] + ["not json"]) + "\n")
    report = validate_file(data)
    assert report.n_examples == 10
    assert report.errors["invalid_json"][0].startswith("line 11")
    assert "too_few_examples" not in report.errors
    assert report.warnings == []
    assert main(["dataset", "validate", str(data)]) == 6
    out = capsys.readouterr().out
    assert "10 supervised example(s)" in out and "invalid_json: 1" in out
    assert "no system message" not in out


def test_system_message_warning_counts_valid_examples_only(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    lines = [_sft_line(i, system=i < 3) for i in range(10)] + ["{broken", '"a string"']
    data.write_text("\n".join(lines) + "\n")
    report = validate_file(data)
    assert report.warnings == ["7 example(s) have no system message while others do"]
    assert report.n_examples == 11  # the string row parses (a data_type error), the broken line does not


def test_image_examples_are_counted_by_the_base_models_image_rule() -> None:
    # an image of unknown size counts as one 512-px tile: gpt-4o 85 + 170, gpt-4o-mini 2833 + 5667
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}}
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]},
                        {"role": "assistant", "content": "A mug."}]}
    text = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}]},
                         {"role": "assistant", "content": "A mug."}]}

    def tokens(r: dict, model: str) -> float:
        return validate_rows([("line 1", r)], model=model, min_examples=1).tokens["total"]

    assert tokens(row, "gpt-4o") - tokens(text, "gpt-4o") == 85 + 170
    assert tokens(row, "gpt-4o-mini") - tokens(text, "gpt-4o-mini") == 2833 + 5667


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(_sft_line(i) for i in range(10)) + "\n", encoding="utf-8-sig")
    assert data.read_bytes().startswith(b"\xef\xbb\xbf")
    report = validate_file(data)
    assert report.ok, report.errors
    assert report.n_examples == 10


def test_message_weight_must_be_0_or_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [json.loads(_sft_line(i)) for i in range(12)]
    rows[3]["messages"][1]["weight"] = 2
    rows[5]["messages"][1]["weight"] = "1"
    rows[6]["messages"][1]["weight"] = True
    rows[7]["messages"][1]["weight"] = 0
    rows[8]["messages"][1]["weight"] = 1
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate_file(data)
    assert report.errors == {"invalid_weight": ["line 4", "line 6", "line 7"]}
    assert main(["dataset", "validate", str(data)]) == 6
    out = capsys.readouterr().out
    assert "invalid_weight: 3" in out and CATEGORIES["invalid_weight"] in out


def test_a_line_is_listed_once_per_category(tmp_path: Path) -> None:
    rows = [json.loads(_sft_line(i)) for i in range(10)]
    rows[2]["messages"] = ["just text", 42, {"role": "assistant", "content": "ok"}]
    rows[4]["messages"] = [{"role": "user"}, {"role": "user"}, {"role": "assistant", "content": "ok"}]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate_file(data)
    assert report.errors["data_type"] == ["line 3 (a message is not an object)"]
    assert report.errors["message_missing_key"] == ["line 5"]
    assert report.errors["missing_content"] == ["line 5"]
    assert report.to_dict()["errors"]["data_type"]["count"] == 1


# --- found by the mutation run (docs/mutation.md) ------------------------------------------------------


def _dpo_row(preferred: list[dict[str, Any]]) -> dict[str, Any]:
    return {"input": {"messages": [{"role": "user", "content": "hi"}]},
            "preferred_output": preferred,
            "non_preferred_output": [{"role": "assistant", "content": "no"}]}


def test_a_dpo_output_is_checked_like_a_conversation_and_blamed_by_name() -> None:
    good = [(f"line {n}", _dpo_row([{"role": "assistant", "content": "yes"}])) for n in range(1, 11)]
    rows = good + [("line 11", _dpo_row([{"role": "user", "content": "not a reply"}])),
                   ("line 12", _dpo_row([{"role": "assistant", "content": ""}]))]
    report = validate_rows(rows, method="dpo")
    assert report.errors == {
        "example_missing_assistant_message": ["line 11 (preferred_output)"],
        "missing_content": ["line 12 (preferred_output)"],
    }
    assert validate_rows(good, method="dpo").ok


def test_validate_rows_describes_what_it_checked_and_refuses_an_unknown_method() -> None:
    from oaipipe.errors import DatasetError
    from oaipipe.models_table import DEFAULT_FINE_TUNE_MODEL
    from oaipipe.tokens import tokenizer_name
    from oaipipe.training.validate import MIN_EXAMPLES

    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
    report = validate_rows([("line 1", row)])
    assert (report.source, report.model, report.min_examples) == ("dataset", DEFAULT_FINE_TUNE_MODEL, MIN_EXAMPLES)
    assert report.tokenizer == tokenizer_name(DEFAULT_FINE_TUNE_MODEL)
    assert report.assistant_tokens and report.assistant_tokens["max"] > 0
    report = validate_rows([("line 1", row)], model="gpt-3.5-turbo", source="d.jsonl", min_examples=3)
    assert (report.source, report.model, report.min_examples) == ("d.jsonl", "gpt-3.5-turbo", 3)
    assert report.tokenizer == tokenizer_name("gpt-3.5-turbo")
    with pytest.raises(DatasetError) as raised:
        validate_rows([("line 1", row)], method="ppo")
    assert (raised.value.message, raised.value.hint) == ("unknown fine-tuning method 'ppo'", "use supervised or dpo")


def test_a_bad_row_does_not_stop_the_rows_after_it_and_the_token_limit_itself_is_allowed() -> None:
    from oaipipe.training.validate import ParseError

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
    n = count_message_tokens(good["messages"], "gpt-4o-mini")
    report = validate_rows([("line 1", ParseError("not JSON")), ("line 2", 5), ("line 3", good)],
                           model="gpt-4o-mini", token_limit=n)
    assert set(report.errors) >= {"invalid_json", "data_type"}
    assert report.tokens["total"] == n and report.messages_per_example["total"] == 2  # line 3 was counted
    assert "example_over_token_limit" not in report.errors  # exactly at the limit: accepted
    over = validate_rows([("line 1", good)], model="gpt-4o-mini", token_limit=n - 1)
    assert over.errors["example_over_token_limit"] == [f"line 1 ({n:,} tokens)"]


def test_tokens_are_counted_with_the_models_own_tokenizer_and_one_missing_system_message_is_warned() -> None:
    from oaipipe.training.validate import PER_MESSAGE_OVERHEAD, REPLY_PRIMING

    text = "Überraschend günstige Kaffeetassen — 日本語のレビュー ✓"
    reply = {"role": "assistant", "content": text}
    rows = [("line 1", {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text},
                                     reply]}),
            ("line 2", {"messages": [{"role": "user", "content": text}, reply]})]
    for model in ("gpt-3.5-turbo", "gpt-4o-mini"):  # cl100k_base and o200k_base count this text differently
        report = validate_rows(rows, model=model)
        assert report.tokens["total"] == sum(count_message_tokens(r["messages"], model) for _, r in rows), model
        own = count_message_tokens([reply], model) - REPLY_PRIMING - PER_MESSAGE_OVERHEAD  # the reply alone
        assert report.assistant_tokens["total"] == 2 * own, model
        assert report.warnings == ["1 example(s) have no system message while others do"]
    assert validate_rows(rows[:1]).warnings == []  # every example has one: nothing to warn about


def test_an_image_in_a_reply_is_an_error_and_its_tokens_are_counted_at_the_models_image_rate() -> None:
    from oaipipe.tokens import image_tokens
    from oaipipe.training.validate import PER_MESSAGE_OVERHEAD, REPLY_PRIMING

    image = {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png", "detail": "low"}}
    user = {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}
    ok = {"messages": [user, {"role": "assistant", "content": "A cat."}]}  # an image in a question: fine
    bad = {"messages": [{"role": "user", "content": "Draw a cat."},
                        {"role": "assistant", "content": [{"type": "text", "text": "Here:"}, image]}]}
    report = validate_rows([("line 1", ok), ("line 2", bad)], model="gpt-4o-mini")
    assert report.errors["image_in_assistant_message"] == ["line 2"]
    dpo = {"input": {"messages": [user]}, "preferred_output": [{"role": "assistant", "content": [image]}],
           "non_preferred_output": [{"role": "assistant", "content": "A dog."}]}
    assert validate_rows([("line 1", dpo)], method="dpo").errors["image_in_assistant_message"] == [
        "line 1 (preferred_output)"]
    # the figures still describe the file as written: the reply's image at gpt-4o-mini's own rate (2833 for a
    # low-detail image, not gpt-4o's 85)
    reply = bad["messages"][1]
    text_only = count_message_tokens([{"role": "assistant", "content": "Here:"}], "gpt-4o-mini")
    assert report.assistant_tokens["max"] == (text_only + image_tokens(1, 1, "low", model="gpt-4o-mini")
                                              - REPLY_PRIMING - PER_MESSAGE_OVERHEAD)
    assert count_message_tokens([reply], "gpt-4o-mini", image_model="gpt-4o-mini") - text_only == 2833


def test_no_row_a_user_can_write_makes_the_token_count_fail() -> None:
    # a count never fails (oaipipe.tokens.count_tokens): a row the format checks let through, however odd, is
    # counted and the rows after it are checked too
    odd_contents: list[Any] = [
        "<|endoftext|> <|im_start|>", "\udcff lone surrogate", "x" * 200_000, [1, None, [2]], {"text": "a dict"},
        [{"type": "image_url", "image_url": "not a dict"}], [{"type": "image_url", "image_url": {"detail": ["x"]}}],
        [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}, "detail": 7}],
        [{"type": "input_image"}], [{"type": "text", "text": {"nested": True}}], [{"type": None}], 12.5, True,
    ]
    rows = [(f"line {i}", {"messages": [{"role": "user", "content": c, "name": "n"},
                                        {"role": "assistant", "content": "ok", "weight": 1}]})
            for i, c in enumerate(odd_contents, start=1)]
    report = validate_rows(rows, model="gpt-4o-mini")
    assert report.messages_per_example["total"] == 2 * len(odd_contents)  # every row was counted


@pytest.mark.parametrize("content", [
    [[1, 2, [3]]], ["a bare string"], [{"type": "text", "text": None}], [{"type": "text"}], [{"type": "text", "text": ""}],
    [{"type": "image_url", "image_url": {"url": None}}], [{"type": "image_url", "image_url": "https://x.invalid/a.png"}],
    [{"type": "image_url", "image_url": {"url": "https://x.invalid/a.png", "detail": "ultra"}}],
    [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}], [{"type": "audio", "audio": "..."}],
])
def test_a_malformed_content_part_is_reported_at_its_line(content: list) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "hello"}]}
    report = validate_rows([("line 1", good), ("line 2", bad)])
    assert report.errors["invalid_content_part"] == ["line 2"]
    parts = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
             {"type": "image_url", "image_url": {"url": "https://x.invalid/a.png"}}]
    fine = {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": [parts[0]]}]}
    assert "invalid_content_part" not in validate_rows([("line 1", fine)]).errors

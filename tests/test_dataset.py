"""Dataset builder: every input format, selection by sentiment, dedup, a deterministic split, DPO pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from oaipipe.errors import DatasetError
from oaipipe.training import build_dataset, parse_select, read_examples, write_dataset

REPO = Path(__file__).resolve().parent.parent
SYS = "You are a helpful support agent."


def _sent(label: str | None) -> dict[str, Any] | None:
    return None if label is None else {"label": label, "score": 0.5, "analyzer": "keyword"}


def dialogue_line(i: int, user: str, reply: str, label: str | None, step: str = "ask:reply") -> dict[str, Any]:
    return {"run_id": "run1", "record_id": f"r{i}", "step": step, "time": "2026-01-01T00:00:00Z",
            "model": "local:gpt-4o-mini", "backend": "local", "usage": {}, "latency": 0.1, "request_id": None,
            "cached": False,
            "messages": [{"role": "system", "content": SYS, "sentiment": None},
                         {"role": "user", "content": user, "sentiment": _sent("neutral")},
                         {"role": "assistant", "content": reply, "sentiment": _sent(label)}]}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_csv_prompt_completion_with_system(tmp_path: Path) -> None:
    result = build_dataset(REPO / "examples" / "data" / "qa.csv", system=SYS)
    assert len(result.train) == 12
    first = result.train[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[0]["content"] == SYS
    assert first[1]["content"] == "How do I reset my password?"
    assert set(first[2]) == {"role", "content"}


def test_csv_question_answer_and_system_column(tmp_path: Path) -> None:
    csv = tmp_path / "faq.csv"
    csv.write_text("Question,Answer,system\nWhat?,That.,Be brief.\nWho?,Us.,\n", encoding="utf-8")
    rows = build_dataset(csv, system="Default system").train
    assert rows[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert rows[1]["messages"][0] == {"role": "system", "content": "Default system"}
    assert rows[1]["messages"][2] == {"role": "assistant", "content": "Us."}


def test_csv_without_pair_columns_says_which_columns_exist(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("id,text\n1,hello\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        build_dataset(csv)
    assert "id, text" in str(err.value) and "prompt,completion" in str(err.value)


def test_dialogue_jsonl_select_positive_and_dedup(tmp_path: Path) -> None:
    lines = [dialogue_line(1, "Hi there", "Glad to help!", "positive"),
             dialogue_line(2, "It broke", "That is terrible, sorry.", "negative"),
             dialogue_line(3, "  HI there ", "glad to  help!", "positive"),  # same exchange, other case/spaces
             dialogue_line(4, "Thanks", "You're welcome, great to hear!", "positive"),
             dialogue_line(5, "What?", "Something.", None)]
    path = write_jsonl(tmp_path / "dialogue.jsonl", lines)
    result = build_dataset(path, select={"sentiment": "positive"})
    assert [r["messages"][1]["content"] for r in result.train] == ["Hi there", "Thanks"]
    assert result.stats["duplicates"] == 1 and result.stats["not_selected"] == 2
    for row in result.train:  # sentiment annotations never reach the dataset
        assert all(set(m) == {"role", "content"} for m in row["messages"])
    everything = build_dataset(path)
    assert len(everything.train) == 4


def test_dialogue_jsonl_skips_image_exchanges_unless_asked(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [
        dialogue_line(1, "Hi", "Hello!", "positive"),
        dialogue_line(1, "What's in this image? [image: a.png]", "A red mug.", "neutral",
                      step="describe_image:image_description")])
    assert len(build_dataset(path).train) == 1
    only = build_dataset(path, step="image_description").train
    assert len(only) == 1 and only[0]["messages"][1]["content"].startswith("What's in this image")


def test_dialogue_json_with_record_ids(tmp_path: Path) -> None:
    entries = []
    for i, (user, reply, label) in enumerate([("A?", "Great answer A!", "positive"), ("B?", "Bad B.", "negative")]):
        for role, content, lab in (("system", SYS, None), ("user", user, "neutral"), ("assistant", reply, label)):
            entries.append({"role": role, "content": content, "sentiment": _sent(lab), "record_id": f"r{i}",
                            "run_id": "run1", "time": "t"})
    entries.insert(3, {"role": "user", "content": "orphan", "sentiment": None, "record_id": "rX", "run_id": "run1"})
    path = tmp_path / "dialogue.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    rows = build_dataset(path, select={"sentiment": "positive"}).train
    assert rows == [{"messages": [{"role": "system", "content": SYS}, {"role": "user", "content": "A?"},
                                  {"role": "assistant", "content": "Great answer A!"}]}]
    assert len(build_dataset(path).train) == 2  # the orphan user line never joins another record


def test_dialogue_json_applies_step_rules_like_dialogue_jsonl(tmp_path: Path) -> None:
    entries: list[dict[str, Any]] = []
    for i in range(2):
        for step, msgs in (
            ("describe_image:caption", [("user", "Describe this image: [image]", "neutral"),
                                        ("assistant", f"A lovely photo {i}.", "positive")]),
            ("ask:reply", [("system", SYS, None), ("user", f"Q{i}?", "neutral"),
                           ("assistant", f"Great answer {i}!", "positive")]),
        ):
            for role, content, label in msgs:
                entries.append({"role": role, "content": content, "sentiment": _sent(label), "record_id": f"r{i}",
                                "run_id": "run1", "step": step, "time": "t"})
    path = tmp_path / "dialogue.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    rows = build_dataset(path, select={"sentiment": "positive"}).train
    assert [r["messages"][-1]["content"] for r in rows] == ["Great answer 0!", "Great answer 1!"]
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert len(build_dataset(path, step="reply").train) == 2
    captions = build_dataset(path, step="describe_image").train
    assert [r["messages"][-1]["content"] for r in captions] == ["A lovely photo 0.", "A lovely photo 1."]


def test_dialogue_json_never_mixes_steps(tmp_path: Path) -> None:
    entries = [{"role": "user", "content": "unanswered", "sentiment": None, "record_id": "r1", "run_id": "run1",
                "step": "describe_image:caption"},
               {"role": "system", "content": SYS, "sentiment": None, "record_id": "r1", "run_id": "run1",
                "step": "ask:reply"},
               {"role": "user", "content": "Q?", "sentiment": None, "record_id": "r1", "run_id": "run1",
                "step": "ask:reply"},
               {"role": "assistant", "content": "A!", "sentiment": None, "record_id": "r1", "run_id": "run1",
                "step": "ask:reply"}]
    path = tmp_path / "dialogue.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    rows = build_dataset(path, step="reply").train
    assert [[m["content"] for m in r["messages"]] for r in rows] == [[SYS, "Q?", "A!"]]


def test_seed_format_dialogue_json_without_record_ids(tmp_path: Path) -> None:
    entries = [{"role": "system", "content": SYS, "sentiment": "neutral"},
               {"role": "user", "content": "One?", "sentiment": "neutral"},
               {"role": "assistant", "content": "One!", "sentiment": "positive"},
               {"role": "user", "content": "Two?", "sentiment": "neutral"},
               {"role": "assistant", "content": "Two!", "sentiment": "negative"}]
    path = tmp_path / "dialogue.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    rows = build_dataset(path).train
    assert [[m["content"] for m in r["messages"]] for r in rows] == [[SYS, "One?", "One!"], ["Two?", "Two!"]]
    assert len(build_dataset(path, select={"sentiment": "positive"}).train) == 1


def test_run_records_select_by_record_field(tmp_path: Path) -> None:
    def record(i: int, reply_label: str, status: str = "done") -> dict[str, Any]:
        ex = dialogue_line(i, f"Question {i}", f"Reply {i}", None)
        return {"id": f"r{i}", "status": status, "fields": {"text": f"Question {i}", "reply": f"Reply {i}",
                                                          "reply_sentiment": reply_label},
                "exchanges": [ex], "error": None if status == "done" else "boom"}
    path = write_jsonl(tmp_path / "journal.jsonl", [record(1, "positive"), record(2, "negative"),
                                                    record(3, "positive", status="failed"),
                                                    record(4, "positive")])
    rows = build_dataset(path, select={"reply_sentiment": "positive"}).train
    assert [r["messages"][1]["content"] for r in rows] == ["Question 1", "Question 4"]
    # a field holding a sentiment dict matches on its label; a list means "any of"
    dict_path = write_jsonl(tmp_path / "j2.jsonl", [
        {**record(5, "x"), "fields": {"reply_sentiment": {"label": "positive", "score": 0.9}}}])
    assert len(build_dataset(dict_path, select={"reply_sentiment": "positive"}).train) == 1
    assert len(build_dataset(path, select={"reply_sentiment": ["positive", "negative"]}).train) == 3


def test_jsonl_chat_rows_pass_through_and_prompt_completion_lines(tmp_path: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 1}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [chat, {"prompt": "p", "completion": "c"}])
    rows = build_dataset(path, system="S").train
    assert rows[0] == chat
    assert rows[1]["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "p"},
                                   {"role": "assistant", "content": "c"}]


def test_folder_of_files_in_stable_order(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.csv").write_text("prompt,completion\nA,a\n", encoding="utf-8")
    write_jsonl(folder / "sub" / "b.jsonl", [{"prompt": "B", "completion": "b"}])
    (folder / "notes.txt").write_text("ignored")
    rows = build_dataset(folder).train
    assert [r["messages"][0]["content"] for r in rows] == ["A", "B"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no .csv, .jsonl or .json"):
        read_examples(empty)


def test_missing_path_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_examples(tmp_path / "nope.csv")
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(DatasetError, match=r"\.csv, \.jsonl or \.json"):
        read_examples(odd)


def test_split_is_deterministic_and_stable(tmp_path: Path) -> None:
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(200)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    a = build_dataset(path, validation_fraction=0.2, seed=7)
    b = build_dataset(path, validation_fraction=0.2, seed=7)
    assert a.train == b.train and a.validation == b.validation
    assert 20 <= len(a.validation) <= 60 and len(a.train) + len(a.validation) == 200
    c = build_dataset(path, validation_fraction=0.2, seed=8)
    assert c.validation != a.validation
    # more data never moves an old example across the split
    bigger = write_jsonl(tmp_path / "more.jsonl", rows + [{"prompt": f"new {i}", "completion": "x"} for i in range(50)])
    d = build_dataset(bigger, validation_fraction=0.2, seed=7)
    assert all(row in d.validation for row in a.validation)
    files = write_dataset(a, tmp_path / "out" / "train.jsonl")
    again = write_dataset(b, tmp_path / "out2" / "train.jsonl")
    assert files.sha256 == again.sha256 and files.validation_path and files.validation_path.name == "train.validation.jsonl"
    assert files.n_validation == len(a.validation)
    with pytest.raises(DatasetError, match="validation_fraction"):
        build_dataset(path, validation_fraction=1.5)


def test_dpo_pairs_positive_and_negative_replies_to_the_same_prompt(tmp_path: Path) -> None:
    lines = [dialogue_line(1, "Where is my order?", "It ships today, thanks for waiting!", "positive"),
             dialogue_line(2, "Where is my order?", "No idea.", "negative"),
             dialogue_line(3, "Refund?", "Sure, happy to help!", "positive"),  # no negative partner
             dialogue_line(4, "Other", "Meh.", "neutral")]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    result = build_dataset(path, method="dpo")
    assert result.train == [{
        "input": {"messages": [{"role": "system", "content": SYS}, {"role": "user", "content": "Where is my order?"}]},
        "preferred_output": [{"role": "assistant", "content": "It ships today, thanks for waiting!"}],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }]
    assert result.stats["not_pairable"] == 2
    # the selection can flip the preference
    flipped = build_dataset(path, method="dpo", select={"sentiment": "negative"}).train
    assert flipped[0]["preferred_output"][0]["content"] == "No idea."


def test_dpo_from_csv_chosen_rejected(tmp_path: Path) -> None:
    csv = tmp_path / "prefs.csv"
    csv.write_text("prompt,chosen,rejected\nHi,Hello! How can I help?,What.\n", encoding="utf-8")
    row = build_dataset(csv, method="dpo", system=SYS).train[0]
    assert row["input"]["messages"][-1] == {"role": "user", "content": "Hi"}
    assert row["preferred_output"] == [{"role": "assistant", "content": "Hello! How can I help?"}]
    assert row["non_preferred_output"] == [{"role": "assistant", "content": "What."}]
    sft = build_dataset(csv).train[0]
    assert sft["messages"][-1]["content"] == "Hello! How can I help?"


def test_parse_select() -> None:
    assert parse_select(["sentiment=positive", "model = x"]) == {"sentiment": "positive", "model": "x"}
    with pytest.raises(DatasetError, match="KEY=VALUE"):
        parse_select(["positive"])


def test_unknown_method() -> None:
    with pytest.raises(DatasetError, match="supervised or"):
        build_dataset(REPO / "examples" / "data" / "qa.csv", method="rl")


def test_a_utf8_bom_does_not_break_line_1(tmp_path: Path) -> None:
    rows = [dialogue_line(i, f"Q{i}?", f"A{i}!", "positive") for i in range(2)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8-sig")
    assert len(build_dataset(path).train) == 2
    entries = [{"role": "user", "content": "Q?", "sentiment": None}, {"role": "assistant", "content": "A!"}]
    jpath = tmp_path / "d.json"
    jpath.write_text(json.dumps(entries), encoding="utf-8-sig")
    assert len(build_dataset(jpath).train) == 1

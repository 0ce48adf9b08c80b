"""The dialogue-json sink appends at the document's tail: a write costs the record, not the document.

And it keeps the guarantees it had when it rewrote the whole document: valid JSON after every write, the
seed's layout, a log across runs, exactly once after a kill and on resume (a torn tail is cut back to
the last whole entry, which only a marker left by the killed writer allows), and a file oaipipe did not
write is never overwritten.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from _scale_util import read_jsonl, write_pipeline
from test_sinks import build, killed, result, run_info

from oaipipe.errors import ExitCode, RunLockedError, StorageError
from oaipipe.kit import sinks as _sink_files
from oaipipe.plugins import PluginHost

OAIPIPE = str(Path(sys.executable).parent / "oaipipe")


def entries(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def ids(path: Path) -> list[str | None]:
    return [e.get("record_id") for e in entries(path)]


def written_bytes() -> int:
    """Bytes this process passed to write()/pwrite() so far, to any file (Linux /proc/self/io ``wchar``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


# --- cost -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_each_write_costs_the_record_not_the_document(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    sink = build(host, tmp_path, type="dialogue-json", path="d.json")
    sink.open(run_info(), None)
    costs, before = [], b""
    for n in range(300):
        ahead = written_bytes()
        sink.write(result(f"r{n}"))
        costs.append(written_bytes() - ahead)
        after = path.read_bytes() if path.exists() else b""
        # the document before this write, minus its closing bracket, is untouched at the head of the new one
        assert after.startswith(before[:len(before.rstrip(b"\n]"))]), n
        before = after
    sink.close()
    size = path.stat().st_size
    assert len(entries(path)) == 900
    # each write is one record's entries (about 1 KB here) while the document grows to 300 times that
    assert max(costs) <= 2 * min(costs) < size / 100, (min(costs), max(costs), size)
    assert sum(costs) <= 1.05 * size


@pytest.mark.parametrize("indent", [0, 1, 2, 4])
def test_indented_entries_are_laid_out_as_json_dumps_would(indent: int) -> None:
    odd = object()
    values = [{}, [], "", 0, None, True, 1.5, float("nan"), "é\n\"\\\u2028", [[]], [{}], {"a": {}}, (1, 2),
              {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}],
               "sentiment": {"label": "positive", "score": 0.5}, "n": [1, [2, [3, {"k": []}]]]},
              {1: "int key", None: "null key", 2.5: "float key", False: "bool key"}, {"nested": {3: [odd]}}, odd]
    for value in values:
        assert _sink_files.dumps_indented(value, indent) == json.dumps(value, indent=indent, ensure_ascii=False,
                                                                        default=str), value


# --- exactly once across a real SIGKILL ------------------------------------------------------------------


def test_sigkilled_run_then_rerun_leaves_every_exchange_once(tmp_path: Path) -> None:
    n = 300
    path = write_pipeline(tmp_path, "{type: local, latency: 0.01, concurrency: 2}", n=n,
                          steps='- {type: ask, system: "Be brief.", prompt: "Reply to: {text}", output: reply}\n',
                          sinks="- {type: dialogue-json, path: out/dialogue.json}\n")
    doc = tmp_path / "out" / "dialogue.json"
    proc = subprocess.Popen([OAIPIPE, "run", str(path), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if doc.exists() and doc.read_bytes().count(b'"record_id"') >= 30:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    journal = next((tmp_path / "runs").glob("*/*/journal.jsonl"))
    assert len(journal.read_bytes().splitlines()) < n  # killed mid-run
    done = subprocess.run([OAIPIPE, "run", str(path), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "finished"
    got = entries(doc)  # valid JSON
    per_record = Counter((e["run_id"], e["record_id"], e["role"]) for e in got)
    assert len({e["run_id"] for e in got}) == 1
    assert sorted({rid for _, rid, _ in per_record}, key=int) == [str(i) for i in range(1, n + 1)]
    assert set(per_record.values()) == {1} and len(got) == 3 * n
    assert sorted(e["id"] for e in read_jsonl(journal)) == sorted(str(i) for i in range(1, n + 1))
    assert not list(doc.parent.glob(".dialogue.json.*"))


# --- torn tails -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("indent", [2, None])
@pytest.mark.parametrize("resume", [True, False])
def test_a_torn_tail_is_cut_back_to_the_last_whole_entry(host: PluginHost, tmp_path: Path, indent: int | None,
                                                         resume: bool) -> None:
    path = tmp_path / "d.json"
    sink = build(host, tmp_path, type="dialogue-json", path="d.json", indent=indent)
    sink.open(run_info("R1"), None)
    for rid in "ab":
        sink.write(result(rid))
    whole = path.read_bytes()
    sink.write(result("c", reply="Ünïcödé reply, {with} [brackets] and \"quotes\""))
    killed(sink)
    full, marker = path.read_bytes(), (tmp_path / ".d.json.writing").read_bytes()
    cut_from = len(whole.rstrip(b"\n]"))
    # SIGKILL mid-write: any prefix of the last write may survive (its head, its end, and every 7th byte)
    for cut in sorted({*range(cut_from, cut_from + 40), *range(len(full) - 40, len(full)),
                       *range(cut_from, len(full), 7)}):
        with path.open("r+b") as fh:
            fh.write(full)
            fh.truncate(cut)
        (tmp_path / ".d.json.writing").write_bytes(marker)
        again = build(host, tmp_path, type="dialogue-json", path="d.json", indent=indent)
        again.open(run_info("R1" if resume else "R2"), {"a", "b"} if resume else None)
        got = entries(path)  # valid JSON again
        if resume:  # c was not journaled: all of it goes, and the rerun writes it again
            assert [e["record_id"] for e in got] == ["a"] * 3 + ["b"] * 3, cut
        else:  # a new run keeps every whole entry: those of a and b, and the first ones of c
            assert [e["record_id"] for e in got] == ["a"] * 3 + ["b"] * 3 + ["c"] * (len(got) - 6), cut
            assert [e["role"] for e in got[6:]] == ["system", "user", "assistant"][:len(got) - 6], cut
        again.write(result("d"))
        again.close()
        assert ids(path)[-3:] == ["d"] * 3
        assert not (tmp_path / ".d.json.writing").exists()


@pytest.mark.parametrize("repair_fails", [False, True])
def test_a_failed_write_leaves_a_document_the_next_run_opens(host: PluginHost, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             repair_fails: bool) -> None:
    path = tmp_path / "d.json"
    sink = build(host, tmp_path, type="dialogue-json", path="d.json")
    sink.open(run_info("R1"), None)
    sink.write(result("a"))
    real = _sink_files.JsonArrayLog._write_at
    calls = []

    def disk_full(self: _sink_files.JsonArrayLog, offset: int, data: bytes) -> None:
        calls.append(offset)
        if len(calls) == 1 or repair_fails:
            real(self, offset, data[:len(data) // 2])  # half of it reached the disk
            raise OSError(28, "No space left on device")
        real(self, offset, data)

    monkeypatch.setattr(_sink_files.JsonArrayLog, "_write_at", disk_full)
    with pytest.raises(OSError):
        sink.write(result("b"))
    monkeypatch.undo()
    sink.close()  # as the runner does when a sink fails
    if not repair_fails:
        assert ids(path) == ["a"] * 3  # the closing bracket was put back at once
    again = build(host, tmp_path, type="dialogue-json", path="d.json")
    again.open(run_info("R1"), {"a"})
    assert ids(path) == ["a"] * 3
    again.write(result("b"))
    again.close()
    assert ids(path) == ["a"] * 3 + ["b"] * 3


def test_a_resume_drops_an_unfinished_record_in_the_middle(host: PluginHost, tmp_path: Path) -> None:
    # a record of this run that is not in the journal, followed by ones that are (a journal line was lost)
    path = tmp_path / "d.json"
    seed = {"role": "user", "content": "from the old module", "sentiment": "positive"}
    path.write_text(json.dumps([seed], indent=4) + "\n", encoding="utf-8")
    sink = build(host, tmp_path, type="dialogue-json", path="d.json")
    sink.open(run_info("R1"), None)
    for rid in ["a", "b", "é-c", "d"]:
        sink.write(result(rid))
    sink.close()
    again = build(host, tmp_path, type="dialogue-json", path="d.json")
    again.open(run_info("R1"), {"a", "é-c"})
    assert entries(path)[0] == seed
    assert ids(path)[1:] == ["a"] * 3 + ["é-c"] * 3
    again.write(result("b"))
    again.close()
    assert ids(path)[1:] == ["a"] * 3 + ["é-c"] * 3 + ["b"] * 3
    assert not list(tmp_path.glob(".d.json.*"))


def test_block_boundaries_do_not_matter(host: PluginHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sink_files._ArrayWalk, "BLOCK", 7)  # every entry, string and number spans blocks
    path = tmp_path / "d.json"
    old = [{"role": "user", "n": 12345678901234, "x": 1.5e10, "s": 'ünï " \\ {'},
           {"role": "x", "list": [1, 2.5e3, "s", {"a": [], "b": {}}], "t": True, "z": None}]
    path.write_text(json.dumps(old, ensure_ascii=False), encoding="utf-8")
    sink = build(host, tmp_path, type="dialogue-json", path="d.json")
    sink.open(run_info("R1"), set())
    sink.write(result("a"))
    sink.close()
    got = entries(path)
    assert got[:2] == old
    assert [e["record_id"] for e in got[2:]] == ["a"] * 3


def test_a_long_last_entry_is_found_past_the_tail_window(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    long_reply = "{x} " * 100_000  # 400 KB: the tail check widens its window until the entry's "{"
    sink = build(host, tmp_path, type="dialogue-json", path="d.json")
    sink.open(run_info("R1"), None)
    sink.write(result("a", reply=long_reply))
    sink.close()
    again = build(host, tmp_path, type="dialogue-json", path="d.json")
    again.open(run_info("R2"), None)
    again.write(result("b"))
    again.close()
    got = entries(path)
    assert [e["record_id"] for e in got] == ["a"] * 3 + ["b"] * 3
    assert got[2]["content"] == long_reply


# --- what is not ours ----------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    '[{"role": "user",',                        # looks torn, but no writer of ours left a marker
    '[{"role": "user"}, {"role": "assistant"',
    '[{"role": "user"}]\ntrailing notes',
    '[{"name": "not a dialogue entry"}]',
    "[1, 2, 3]",
    '{"role": "user"}',
    "my own notes\n",
    '[{"role": "user"},]',
])
@pytest.mark.parametrize("resume", [False, True])
def test_a_file_oaipipe_did_not_write_is_left_as_it_is(host: PluginHost, tmp_path: Path, content: str,
                                                       resume: bool) -> None:
    path = tmp_path / "d.json"
    path.write_text(content, encoding="utf-8")
    for mode in ("append", "overwrite"):
        sink = build(host, tmp_path, type="dialogue-json", path="d.json", mode=mode)
        with pytest.raises(StorageError) as err:
            sink.open(run_info(), {"a"} if resume else None)
        sink.close()
        assert str(path) in str(err.value) and ("move it away" in str(err.value) or "not overwritten" in str(err.value))
        assert path.read_text(encoding="utf-8") == content


def test_a_marker_left_for_another_file_allows_no_cut(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    sink = build(host, tmp_path, type="dialogue-json", path="d.json")
    sink.open(run_info("R1"), None)
    sink.write(result("a"))
    killed(sink)
    path.unlink()
    path.write_text('[{"role": "user", "content": "mine"}, {"role": "us', encoding="utf-8")  # a new inode
    again = build(host, tmp_path, type="dialogue-json", path="d.json")
    with pytest.raises(StorageError, match="not a valid JSON array"):
        again.open(run_info("R2"), None)
    assert path.read_text(encoding="utf-8") == '[{"role": "user", "content": "mine"}, {"role": "us'


def test_a_second_writer_is_refused_while_the_first_is_open(host: PluginHost, tmp_path: Path) -> None:
    first = build(host, tmp_path, type="dialogue-json", path="d.json")
    first.open(run_info("R1"), None)
    first.write(result("a"))
    second = build(host, tmp_path, type="dialogue-json", path="d.json")
    with pytest.raises(RunLockedError, match="being written") as err:  # exit 10, as every busy lock
        second.open(run_info("R2"), None)
    assert err.value.exit_code == ExitCode.RUN_LOCKED and err.value.path == str(tmp_path / "d.json")
    first.write(result("b"))
    first.close()
    assert ids(tmp_path / "d.json") == ["a"] * 3 + ["b"] * 3


def test_compact_layout_is_json_dumps_and_mixes_with_indented(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    for run_id, indent in (("R1", None), ("R2", 2), ("R3", None)):
        sink = build(host, tmp_path, type="dialogue-json", path="d.json", indent=indent)
        sink.open(run_info(run_id), None)
        sink.write(result("a"))
        sink.write(result("b"))
        sink.close()
        if run_id == "R1":
            assert path.read_text(encoding="utf-8") == json.dumps(entries(path), ensure_ascii=False) + "\n"
    assert [e["run_id"] for e in entries(path)] == ["R1"] * 6 + ["R2"] * 6 + ["R3"] * 6


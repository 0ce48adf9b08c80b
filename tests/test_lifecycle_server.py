"""The ``shutdown_date`` a server gives in ``GET /v1/models`` (issue 11), over HTTP against ``oaipipe serve``:
``validate --online`` and the start of a run warn within 60 days of it and refuse a model past it, as they do
for the table's dates; a server without the list is no error (one ``-v`` line); plain ``validate`` and the
dry run ask nothing."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
from _scale_util import write_pipeline

from oaipipe.testing import running_server

STEPS = '- {type: ask, prompt: "Reply to: {text}", output: reply}\n'
SINKS = "- {type: jsonl, path: out/r.jsonl}\n"
#: the server's date for gpt-4.1-mini (later than the machine's date, so that the server still lists it)
DATE = "2099-03-01"


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str, today: str) -> tuple[int, str]:
    from oaipipe.cli import main

    monkeypatch.setenv("OAIPIPE_TODAY", today)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(args))
    return int(code), out.getvalue()


def _pipeline(tmp_path: Path, base_url: str, run: str = "", kind: str = "requests") -> Path:
    backend = f"{{type: {kind}, model: gpt-4.1-mini, base_url: '{base_url}', concurrency: 1}}"
    return write_pipeline(tmp_path, backend, n=2, steps=STEPS, sinks=SINKS, extra=run)


@pytest.fixture
def dated() -> Any:
    with running_server(model_shutdowns={"gpt-4.1-mini": DATE}) as srv:
        yield srv


@pytest.mark.parametrize("kind", ["requests", "openai"])
def test_validate_online_warns_and_refuses_by_the_servers_date(tmp_path: Path, dated: Any, kind: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = _pipeline(tmp_path, dated.base_url, kind=kind)
    code, out = _cli(monkeypatch, "validate", str(path), today="2099-01-15")
    assert code == 0 and "shuts down" not in out, out
    assert dated.stats()["requests"] == 0  # plain validate asks nothing
    code, out = _cli(monkeypatch, "validate", "--online", str(path), today="2099-01-15")
    assert code == 0, out
    assert f"gpt-4.1-mini shuts down on {DATE} (GET {dated.base_url}/models), in 45 days" in out, out
    assert dated.stats()["by_path"] == {"/v1/models": 1}
    code, out = _cli(monkeypatch, "validate", "--online", str(path), today=DATE)
    assert code == 2, out
    assert f"gpt-4.1-mini was shut down on {DATE} (GET {dated.base_url}/models)" in out, out
    assert f"{path}:2" in out, out  # the backend's model line
    code, out = _cli(monkeypatch, "validate", "--online", str(path), today="2098-06-01")
    assert code == 0 and "shut" + " down" not in out, out  # more than 60 days ahead: nothing to say


def test_a_run_starts_by_asking_and_refuses_a_model_past_the_servers_date(
        tmp_path: Path, dated: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _pipeline(tmp_path, dated.base_url, "run: {shutdown_dates: always}\n")
    code, out = _cli(monkeypatch, "run", str(path), today=DATE)
    assert code == 2, out
    assert f"gpt-4.1-mini was shut down on {DATE}" in out and f"{path}:2" in out, out
    paths = dated.stats()["by_path"]
    assert paths == {"/v1/models": 1}, paths  # refused before any record was sent
    assert not list((tmp_path / "runs").glob("*/*")), "no run directory is made for a refused run"
    code, out = _cli(monkeypatch, "run", str(path), today="2099-02-01")
    assert code == 0, out
    assert f"warning: {path}:2: model gpt-4.1-mini shuts down on {DATE}" in out, out
    assert dated.stats()["by_path"].get("/v1/chat/completions") == 2


def test_a_run_asks_only_openais_api_by_default_and_the_dry_run_never(
        tmp_path: Path, dated: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _pipeline(tmp_path, dated.base_url)  # run.shutdown_dates: auto, and serve is not OpenAI's API
    code, out = _cli(monkeypatch, "run", str(path), today=DATE)
    assert code == 0, out
    assert "/v1/models" not in dated.stats()["by_path"]
    always = _pipeline(tmp_path / "dry", dated.base_url, "run: {shutdown_dates: always}\n")
    dated.reset_stats()
    code, out = _cli(monkeypatch, "run", str(always), "--dry-run", today=DATE)
    assert code == 0, out
    assert dated.stats()["requests"] == 0


def test_a_server_without_the_model_list_is_no_error(tmp_path: Path, server: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A base_url under which ``/models`` answers 404: validate passes, and ``-v`` says so in one line."""
    path = _pipeline(tmp_path, f"{server.base_url}/elsewhere")
    code, out = _cli(monkeypatch, "validate", "--online", "-v", str(path), today="2099-01-15")
    assert code == 0, out
    lines = [line for line in out.splitlines() if "gave no model list" in line]
    assert len(lines) == 1 and f"{server.base_url}/elsewhere/models" in lines[0], out
    assert server.stats()["by_status"] == {"404": 1}
    code, out = _cli(monkeypatch, "validate", "--online", str(path), today="2099-01-15")
    assert code == 0 and "gave no model list" not in out, out  # not without -v


def test_a_fine_tuned_model_follows_its_base_models_date(tmp_path: Path, dated: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    backend = f"{{type: requests, model: 'ft:gpt-4.1-mini:acme::abc123', base_url: '{dated.base_url}'}}"
    path = write_pipeline(tmp_path, backend, n=2, steps=STEPS, sinks=SINKS)
    code, out = _cli(monkeypatch, "validate", "--online", str(path), today="2099-02-01")
    assert code == 0, out
    assert f"model ft:gpt-4.1-mini:acme::abc123 shuts down on {DATE}" in out, out


def test_a_model_the_server_no_longer_lists_is_warned_about_at_its_line(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model past its shutdown leaves GET /models (`oaipipe serve --model-shutdown` does as OpenAI does), so
    it has no date to be held to: validate --online passed it, and then every call 404'd."""
    with running_server(model_shutdowns={"gpt-4.1-mini": "2020-01-01"}) as gone:
        path = _pipeline(tmp_path, gone.base_url)
        code, out = _cli(monkeypatch, "validate", "--online", str(path), today="2026-06-01")
        assert code == 0, out
        assert f"warning: {path}:2: model gpt-4.1-mini is not among the" in out, out
        assert f"GET {gone.base_url}/models lists: it may be shut down" in out, out
        listed = _pipeline(tmp_path / "listed", gone.base_url)
        listed.write_text(listed.read_text().replace("gpt-4.1-mini", "gpt-4o"))
        code, out = _cli(monkeypatch, "validate", "--online", str(listed), today="2026-06-01")
        assert code == 0 and "is not among" not in out, out

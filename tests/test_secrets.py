"""Every value that came from ``${env:...}`` is masked wherever oaipipe prints or writes it.

A pipeline carries secrets in places no key name gives away (a header, a cookie, a query string of
base_url, a prompt template) and runs against ``oaipipe serve``. Then every file under the run directory
and out/, and everything printed (validate, run, --json, a failing run's errors), is searched for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oaipipe.cli import main
from oaipipe.errors import mask_secrets, redact, redact_data, register_secret

SECRETS = {
    "T_TOKEN": "tok-header-secret-7f3a9c",
    "C_COOKIE": "cookie-secret-b81c2e",
    "Q_KEY": "query-secret-55d0e1",
    "P_WORD": "prompt-secret-9e1d4a",
    "Q_ODD": 'odd"quote\\slash-é-3c',  # shows up escaped in JSON and repr
}


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return SECRETS


def write_project(tmp_path: Path, base_url: str) -> Path:
    (tmp_path / "r.csv").write_text("id,text\n1,my parcel is late\n2,great service\n3,it broke\n",
                                    encoding="utf-8")
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: secrets
        backend:
          type: requests
          base_url: "{base_url}"
          concurrency: 2
          max_retries: 0
          headers:
            X-Auth-Token: "${{env:T_TOKEN}}"
            Cookie: "session=${{env:C_COOKIE}}"
            X-Odd: "${{env:Q_ODD}}"
        source: {{type: csv, path: r.csv, id_column: id}}
        steps:
          - {{type: ask, system: "Use the password ${{env:P_WORD}}.", prompt: "Repeat ${{env:P_WORD}} then: {{text}}",
             output: reply}}
        sinks:
          - {{type: dialogue-jsonl, path: out/dialogue.jsonl}}
          - {{type: dialogue-json, path: out/dialogue.json}}
          - {{type: jsonl, path: out/records.jsonl}}
          - {{type: csv, path: out/records.csv}}
        run: {{cache: false}}
        """), encoding="utf-8")
    return path


def assert_nowhere(texts: dict[str, str]) -> None:
    for where, text in texts.items():
        for name, value in SECRETS.items():
            forms = {value, json.dumps(value)[1:-1], repr(value)[1:-1]}
            for form in forms:
                assert form not in text, f"{name} ({form!r}) found in {where}"


def files_under(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                out[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    return out


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    cli.stdout = out.out  # type: ignore[attr-defined]
    return code, out.out + out.err


def test_no_env_value_reaches_files_or_output(tmp_path: Path, server, secrets_env,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write_project(tmp_path, server.base_url)
    printed: dict[str, str] = {}
    code, printed["validate"] = cli(capsys, "validate", str(path))
    assert code == 0, printed["validate"]
    code, printed["run"] = cli(capsys, "run", str(path), "--fresh")
    assert code == 0, printed["run"]
    code, printed["run --json"] = cli(capsys, "run", str(path), "--fresh", "--json")
    assert code == 0, printed["run --json"]
    summary = json.loads(cli.stdout)  # type: ignore[attr-defined]
    assert summary["records"]["done"] == 3
    # the secrets were really used (the prompt held one), and masked where the dialogue is kept
    journal = Path(summary["journal"]).read_text(encoding="utf-8")
    assert "Repeat *** then: my parcel is late" in journal and "the password ***." in journal
    files = files_under(tmp_path / "runs", tmp_path / "out")
    assert any(p.endswith("journal.jsonl") for p in files) and any(p.endswith("pipeline.json") for p in files)
    assert_nowhere(files)
    assert_nowhere(printed)
    for name, text in files.items():  # masking must not have broken a JSON file
        if name.endswith(".json"):
            json.loads(text)
        elif name.endswith(".jsonl"):
            [json.loads(line) for line in text.splitlines()]


def test_a_failing_run_and_its_errors_show_no_env_value(tmp_path: Path, server, secrets_env,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # a base_url with ?key=... below a path the server does not have: every call fails (404), and every error
    # names the URL (the query string itself is sent with every call: oaipipe.keys.endpoint_url)
    path = write_project(tmp_path, server.base_url + "/missing?key=${env:Q_KEY}")
    printed: dict[str, str] = {}
    code, printed["validate"] = cli(capsys, "validate", str(path))
    assert code == 0 and "***" in printed["validate"], printed["validate"]
    code, printed["run"] = cli(capsys, "run", str(path), "--json")
    assert code != 0
    errors = files_under(tmp_path / "runs")
    failed = [p for p in errors if p.endswith("errors.jsonl")]
    assert failed and errors[failed[0]].count("\n") == 3, errors
    assert_nowhere(errors)
    assert_nowhere(printed)


def test_the_console_script_masks_what_it_prints(tmp_path: Path, server, secrets_env) -> None:
    """The real `oaipipe` process: validate and run --json, stdout and stderr."""
    path = write_project(tmp_path, server.base_url + "?key=${env:Q_KEY}")
    exe = Path(sys.executable).with_name("oaipipe")
    env = {**os.environ, **secrets_env}
    texts = {}
    for argv in (["validate", str(path)], ["run", str(path), "--json"]):
        proc = subprocess.run([str(exe), *argv], capture_output=True, text=True, env=env, timeout=60)
        texts[" ".join(argv[:1])] = proc.stdout + proc.stderr
    assert "***" in texts["validate"]
    assert_nowhere(texts)


# --- the rules ------------------------------------------------------------------------------------


def test_short_values_are_not_masked_and_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TINY", "ab")
    monkeypatch.setenv("WORKERS", "4")  # a number: a setting, neither masked nor warned about
    (tmp_path / "r.csv").write_text("id,text\n1,a\n", encoding="utf-8")
    path = tmp_path / "p.yaml"
    path.write_text("backend: {type: local, concurrency: '${env:WORKERS}'}\n"
                    "source: {type: csv, path: r.csv, id_column: id}\n"
                    "steps:\n  - {type: ask, prompt: 'code ${env:TINY}: {text}', output: reply}\n",
                    encoding="utf-8")
    code, out = cli(capsys, "validate", str(path))
    assert code == 0, out
    assert f"{path}:4: steps.0.prompt" in out and "${env:TINY}" in out and "too short to be masked" in out
    assert "WORKERS" not in out
    assert redact_data({"n": "4 workers"}) == {"n": "4 workers"}


def test_masking_is_by_value_in_every_encoding() -> None:
    secret = 'v@l"ue\\with/odd+chars é'
    register_secret(secret)
    for text in (secret, json.dumps(secret), json.dumps(secret, ensure_ascii=False), repr(secret),
                 "http://h/v1?k=" + __import__("urllib.parse").parse.quote_plus(secret)):
        assert "odd" not in mask_secrets(f"before {text} after"), text
    # data: strings inside, copy on write, record ids kept (the journal and sinks key on them)
    from oaipipe.types import Exchange, Record, RecordResult

    result = RecordResult(Record(id=secret, data={"t": secret}), {"t": f"x {secret}"},
                          [Exchange(record_id=secret, step="ask", messages=[{"role": "user", "content": secret}],
                                    model="m", backend="b")])
    masked = redact_data(result)
    assert masked.record.id == secret and masked.exchanges[0].record_id == secret
    assert masked.fields == {"t": "x ***"} and masked.exchanges[0].messages[0]["content"] == "***"
    assert result.fields == {"t": f"x {secret}"}  # the original is untouched
    plain = {"a": ["no secret here"]}
    assert redact_data(plain) is plain


def test_key_patterns_leave_ordinary_words_alone() -> None:
    assert redact("task-management and desk-organisers") == "task-management and desk-organisers"
    assert redact("key sk-abcdefgh12345678 leaked") == "key *** leaked"


def test_a_token_in_the_url_path_stays_out_of_the_batch_state(tmp_path: Path, server, secrets_env,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A gateway that wants its token in the path (http://host/TOKEN/v1), through the batch backend:
    its state file in OAIPIPE_HOME is keyed by the server's URL, and must not hold the token."""
    import asyncio

    from test_keys import Recorder

    from oaipipe.pipeline import load_pipeline
    from oaipipe.types import ChatRequest

    rec = Recorder(server.port)
    path = write_project(tmp_path, f"http://127.0.0.1:{rec.port}/${{env:T_TOKEN}}/v1")
    text = path.read_text().replace("type: requests", "type: batch\n  poll_interval: 30")
    path.write_text(text.replace('    X-Odd: "${env:Q_ODD}"\n', ""), encoding="utf-8")  # httpx: ASCII headers

    async def submit_and_look() -> dict[str, str]:
        backend = load_pipeline(path).backend
        task = asyncio.ensure_future(backend.chat(ChatRequest(messages=[{"role": "user", "content": "hi"}],
                                                              model="gpt-4o-mini")))
        try:
            while not backend.submitted and not task.done():  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)
            return {str(backend.state_path): backend.state_path.read_text(encoding="utf-8")}  # type: ignore[attr-defined]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await backend.aclose()

    try:
        state = asyncio.run(submit_and_look())
    finally:
        rec.close()
    assert any(SECRETS["T_TOKEN"] in p for _, p, _ in rec.headers)  # the token was really in the URL
    assert all("/***/v1" in text for text in state.values()), state
    assert_nowhere(state)

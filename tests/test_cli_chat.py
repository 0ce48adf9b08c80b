"""``oaipipe models``, ``ask``, ``describe`` and ``assistants`` through the real CLI entry point."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oaipipe.cli import main
from oaipipe.testing import running_server

REPO = Path(__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_ask_offline_falls_back_to_local(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "ask", "My parcel is late", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["backend"] == "local" and data["text"]
    assert "falls back to the embedded offline engine" in err


@pytest.mark.parametrize("backend", ["openai", "requests"])
def test_ask_through_the_server_matches_local(capsys: pytest.CaptureFixture[str], server: Any,
                                              backend: str) -> None:
    code, local_out, _ = run(capsys, "ask", "My parcel is late", "--system", "Be kind", "--backend", "local")
    assert code == 0
    code, remote_out, err = run(capsys, "ask", "My parcel is late", "--system", "Be kind",
                                "--backend", backend, "--base-url", server.base_url)
    assert code == 0, err
    assert remote_out == local_out and remote_out.strip()


def test_ask_with_assistant_preset(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO / "examples")
    code, out, err = run(capsys, "ask", "Where is my order?", "--assistant", "support-agent", "--json")
    assert code == 0, err
    assert json.loads(out)["text"]
    code, _, err = run(capsys, "ask", "x", "--assistant", "nobody")
    assert code == 2 and "unknown assistant preset 'nobody'" in err and "support-agent" in err


def test_ask_unknown_ft_model_is_a_clear_error(capsys: pytest.CaptureFixture[str], server: Any) -> None:
    code, _, err = run(capsys, "ask", "hi", "--model", "ft:gpt-4o-mini:acme::missing", "--base-url", server.base_url)
    assert code == 4
    assert "ft:gpt-4o-mini:acme::missing" in err and "404" in err
    assert server.stats()["requests"] == 1


def test_models_from_the_server(capsys: pytest.CaptureFixture[str], server: Any) -> None:
    code, out, err = run(capsys, "models", "--base-url", server.base_url, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["backend"] == "openai" and data["problem"] is None
    assert "gpt-4o-mini" in [m["id"] for m in data["models"]]
    assert "gpt-4o-mini" in [m["id"] for m in data["local_models"]]
    code, out, _ = run(capsys, "models", "--base-url", server.base_url)
    assert "openai backend (" in out and "local engine" in out


def test_models_without_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "models")
    assert code == 0
    assert "no API key: set OPENAI_API_KEY" in err
    assert "gpt-4o-mini" in out


def test_models_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = run(capsys, "models", "--base-url", url)
    assert code == 4
    assert f"cannot connect to {url}" in err and "oaipipe serve" in err


def test_models_refused_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with running_server(api_key="sk-server-key-123456789") as srv:
        pipeline = tmp_path / "p.yaml"
        pipeline.write_text(
            "source: {type: jsonl, path: in.jsonl}\n"
            f"backend: {{type: requests, base_url: '{srv.base_url}', api_key: sk-wrong-key-987654321}}\n"
        )
        code, _, err = run(capsys, "models", str(pipeline))
        assert srv.stats()["requests"] == 1
    assert code == 5
    assert "refused" in err and "sk-wrong-key-987654321" not in err


def test_models_empty_list_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Empty(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b'{"object": "list", "data": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Empty)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        code, _, err = run(capsys, "models", "--base-url", f"http://127.0.0.1:{httpd.server_port}/v1")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 0
    assert "empty model list" in err


@pytest.fixture
def red_png(tmp_path: Path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (90, 60), (220, 20, 30)).save(path)
    return path


def test_describe_offline(capsys: pytest.CaptureFixture[str], red_png: Path) -> None:
    code, out, _ = run(capsys, "describe", str(red_png), "--detail", "low")
    assert code == 0 and "red" in out.lower()


@pytest.mark.parametrize("backend", ["openai", "requests"])
def test_describe_with_schema_through_server(capsys: pytest.CaptureFixture[str], server: Any, red_png: Path,
                                             tmp_path: Path, backend: str) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"caption": {"type": "string"}},
                                  "required": ["caption"], "additionalProperties": False}))
    code, out, err = run(capsys, "describe", str(red_png), "--schema", str(schema), "--backend", backend,
                         "--base-url", server.base_url, "--model", "gpt-4o-mini", "--json")
    assert code == 0, err
    line = json.loads(out.splitlines()[0])
    assert set(line["parsed"]) == {"caption"} and line["backend"] == backend
    assert line["model"].endswith("gpt-4o-mini")
    assert line["image_tokens"] == 5667 + 2833  # gpt-4o-mini's image rule (one tile), not gpt-4o's 170 + 85
    assert "base64" not in out


def test_describe_bad_images_fail_but_others_go_on(capsys: pytest.CaptureFixture[str], red_png: Path,
                                                   tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    code, out, err = run(capsys, "describe", str(missing), str(red_png))
    assert code == 1
    assert str(missing) in err and "not found" in err
    assert "red" in out.lower()


def test_describe_bad_schema_file(capsys: pytest.CaptureFixture[str], red_png: Path, tmp_path: Path) -> None:
    bad = tmp_path / "s.json"
    bad.write_text("{not json")
    code, _, err = run(capsys, "describe", str(red_png), "--schema", str(bad))
    assert code == 2 and "s.json" in err


def test_assistants_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    file = str(REPO / "examples" / "assistants.yaml")
    code, out, _ = run(capsys, "assistants", "--file", file)
    assert code == 0 and "support-agent" in out and "product-photographer" in out
    code, out, _ = run(capsys, "assistants", "--file", file, "--json")
    names = [a["name"] for a in json.loads(out)["assistants"]]
    assert "support-agent" in names
    code, out, _ = run(capsys, "assistants", "--file", file, "show", "support-agent")
    assert code == 0 and "instructions:" in out
    code, _, err = run(capsys, "assistants", "--file", file, "show", "nobody")
    assert code == 2 and "support-agent" in err


def test_assistants_without_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "assistants")
    assert code == 0 and "no assistants file found" in err


@pytest.mark.parametrize("backend", ["local", "openai", "requests"])
def test_ask_a_fine_tuned_model(capsys: pytest.CaptureFixture[str], server: Any, backend: str) -> None:
    from oaipipe.engine.tuning import train_local_model

    rows = [{"messages": [{"role": "user", "content": "What are your opening hours?"},
                          {"role": "assistant", "content": "We are open 9 to 5, Monday to Friday."}]}]
    model = train_local_model(rows, base_model="gpt-4o-mini", suffix="hours")
    argv = ["ask", "What are your opening hours?", "--model", model, "--backend", backend, "--json"]
    if backend != "local":
        argv += ["--base-url", server.base_url]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    data = json.loads(out)
    assert data["text"] == "We are open 9 to 5, Monday to Friday."
    assert data["model"] == model


def test_describe_together_sends_one_request(capsys: pytest.CaptureFixture[str], server: Any, red_png: Path,
                                             tmp_path: Path) -> None:
    blue = tmp_path / "blue.png"
    Image.new("RGB", (40, 40), (20, 60, 220)).save(blue)
    code, out, err = run(capsys, "describe", str(red_png), str(blue), "--together", "--base-url", server.base_url,
                         "--json")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["image"] == f"{red_png}, {blue}"
    assert server.stats()["requests"] == 1


def test_ask_uses_the_pipeline_backend_and_presets(capsys: pytest.CaptureFixture[str], server: Any,
                                                   tmp_path: Path) -> None:
    (tmp_path / "team.yaml").write_text("assistants:\n  brief: {instructions: Answer briefly., model: gpt-4.1-mini}\n")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "assistants: team.yaml\n"
        "source: {type: jsonl, path: in.jsonl}\n"
        f"backend: {{type: requests, base_url: '{server.base_url}'}}\n"
    )
    code, out, err = run(capsys, "ask", "Where is my parcel?", "--pipeline", str(pipeline), "--assistant", "brief",
                         "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["backend"] == "requests"
    assert "gpt-4.1-mini" in data["model"]
    assert server.stats()["requests"] == 1


def test_models_json_says_why_it_shows_the_local_engine(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--backend", "requests", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["backend"] == "local" and data["problem_kind"] == "no-key"
    assert "falls back" in data["note"]


def test_api_key_env_gives_a_custom_server_its_key(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-openai-key-0000")  # never sent to another server
    monkeypatch.setenv("MY_SERVER_KEY", "sk-server-key-1234")
    with running_server(api_key="sk-server-key-1234") as srv:
        code, out, err = run(capsys, "ask", "hello", "--base-url", srv.base_url)
        assert code == 5
        assert "does not get OPENAI_API_KEY" in err and "--api-key-env" in err
        assert "sk-the-openai-key-0000" not in out + err
        code, out, err = run(capsys, "ask", "hello", "--base-url", srv.base_url, "--api-key-env", "MY_SERVER_KEY")
        assert code == 0 and out.strip()
        code, out, err = run(capsys, "models", "--base-url", srv.base_url, "--api-key-env", "NOT_SET_VAR_X")
        assert code == 2 and "NOT_SET_VAR_X" in err

"""`oaipipe serve` cannot be disrupted by a client without the key, over real sockets on loopback.

With ``--api-key`` every path needs the key (the ``/_oaipipe`` control paths too) and it is checked before a
byte of the body is read; bodies are capped (413); idle and slow clients are dropped; connections beyond the
cap get 503 without a thread; fault settings are validated (NaN, inf, out of range); the stats do not grow
with invented paths; special-token strings in a prompt are plain text.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from openai import OpenAI

from oaipipe.server.config import Faults
from oaipipe.testing import running_server

KEY = "sk-serve-key-0123456789"
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


def wait_for(condition: Callable[[], Any], what: str, deadline: float = 5.0) -> Any:
    """Poll ``condition`` until it is truthy (or fail after ``deadline`` seconds, naming ``what``)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def connect(srv: Any, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Read one HTTP response from ``sock``: (status, lower-cased headers, JSON body)."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(body) if body else None


def call(srv: Any, method: str, path: str, body: bytes | None = None, key: str | None = None,
         ) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else None


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (EOF or reset); False while it is still open."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionError:
        return True


# --- item 10: the key guards every path, before the body ---------------------------------------------------


def test_control_paths_need_the_key_and_a_refused_post_changes_nothing() -> None:
    with running_server(api_key=KEY) as srv:
        faults = json.dumps({"error_rates": {"500": 1.0}, "latency": 5}).encode()
        for key in (None, "sk-wrong-key-987654321"):
            status, body = call(srv, "POST", "/_oaipipe/faults", faults, key=key)
            assert status == 401 and body["error"]["code"] == "invalid_api_key"
            assert call(srv, "POST", "/_oaipipe/stats/reset", b"", key=key)[0] == 401
            assert call(srv, "GET", "/_oaipipe/stats", key=key)[0] == 401
            assert call(srv, "GET", "/_oaipipe/faults", key=key)[0] == 401
            assert call(srv, "GET", "/_oaipipe/health", key=key)[0] == 401
            assert call(srv, "GET", "/nowhere", key=key)[0] == 401  # unknown paths too
        assert srv.server.faults == Faults()  # nothing changed
        assert srv.stats()["by_status"]["401"] == 12  # and the reset was refused
        assert call(srv, "POST", "/v1/chat/completions", CHAT, key=KEY)[0] == 200
        status, body = call(srv, "POST", "/_oaipipe/faults", json.dumps({"latency": 0.01}).encode(), key=KEY)
        assert status == 200 and body["latency"] == 0.01
        assert call(srv, "GET", "/_oaipipe/stats", key=KEY)[0] == 200


def _non_loopback_ipv4() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))  # UDP: picks the outgoing address, sends nothing
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_without_a_key_the_control_paths_answer_loopback_clients_only() -> None:
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    with running_server(host=address) as srv:  # as with oaipipe serve --allow-remote
        conn = http.client.HTTPConnection(address, srv.port, timeout=5)
        conn.request("POST", "/_oaipipe/faults", body=json.dumps({"drop_rate": 1.0}))
        resp = conn.getresponse()
        assert resp.status == 403 and "loopback" in json.loads(resp.read())["error"]["message"]
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 200
        assert srv.server.faults == Faults()
    with running_server(host=address, api_key=KEY) as srv:  # with a key, the key is what counts
        conn = http.client.HTTPConnection(address, srv.port, timeout=5)
        conn.request("GET", "/_oaipipe/stats", headers={"Authorization": f"Bearer {KEY}"})
        assert conn.getresponse().status == 200


def test_the_key_is_checked_before_the_body_is_read() -> None:
    # 150 MB announced, 1 byte sent: a server that reads the body first waits forever for the rest
    with running_server(api_key=KEY) as srv:
        for auth in ({}, {"Authorization": "Bearer sk-wrong-key-987654321"}):
            with connect(srv) as sock:
                sock.sendall(head("POST", "/v1/chat/completions", {
                    **auth, "Content-Type": "application/json", "Content-Length": str(150_000_000)}) + b"{")
                status, headers, body = response(sock)
            assert status == 401 and body["error"]["code"] == "invalid_api_key"
            assert headers["connection"] == "close"
        with connect(srv) as sock:  # the same with a file upload to an unknown path
            sock.sendall(head("POST", "/v1/nowhere", {"Content-Length": str(150_000_000)}) + b"x")
            assert response(sock)[0] == 401


def test_expect_100_continue_is_answered_only_for_the_right_key() -> None:
    with running_server(api_key=KEY) as srv:
        with connect(srv) as sock:
            sock.sendall(head("POST", "/v1/chat/completions", {
                "Content-Length": str(len(CHAT)), "Expect": "100-continue"}))
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 401 "), first[:40]  # no "100 Continue": keep the body
        with connect(srv) as sock:
            sock.sendall(head("POST", "/v1/chat/completions", {
                "Authorization": f"Bearer {KEY}", "Content-Length": str(len(CHAT)), "Expect": "100-continue"}))
            assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
            sock.sendall(CHAT)
            assert response(sock)[0] == 200


def test_a_body_over_the_cap_gets_413_in_openai_shape_unread() -> None:
    with running_server(api_key=KEY, max_body_size=4096) as srv:
        with connect(srv) as sock:  # announced over the cap: refused at once, nothing read
            sock.sendall(head("POST", "/v1/chat/completions", {
                "Authorization": f"Bearer {KEY}", "Content-Length": str(10**9)}) + b"{")
            status, _, body = response(sock)
        assert status == 413
        assert body["error"]["code"] == "request_too_large" and body["error"]["type"] == "invalid_request_error"
        assert "4096" in body["error"]["message"] and "--max-body-size" in body["error"]["message"]
        with connect(srv) as sock:  # chunked: refused as soon as the chunks add up to more than the cap
            sock.sendall(head("POST", "/v1/chat/completions", {
                "Authorization": f"Bearer {KEY}", "Transfer-Encoding": "chunked"}) + b"800\r\n" + b"x" * 2048
                + b"\r\n" + b"1000\r\n")
            assert response(sock)[0] == 413
        # a real client sending a whole 1 MB body reads the 413 (not a connection reset)
        big = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 1_000_000}]})
        resp = requests.post(srv.base_url + "/chat/completions", data=big, timeout=10,
                             headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
        small = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 3000}]})
        assert call(srv, "POST", "/v1/chat/completions", small.encode(), key=KEY)[0] == 200
        assert srv.stats()["by_status"]["413"] == 3


# --- item 10: idle and slow clients, the connection cap ----------------------------------------------------


def test_an_idle_connection_is_closed_after_the_client_timeout() -> None:
    with running_server(client_timeout=0.3) as srv:
        with connect(srv) as sock:  # sends nothing at all
            assert sock.recv(1) == b""  # the server closed it (the client's own timeout is 5 s)
        with connect(srv) as sock:  # a keep-alive connection idle after a complete request
            sock.sendall(head("GET", "/v1/models", {}))
            assert response(sock)[0] == 200
            assert sock.recv(1) == b""


def test_a_client_sending_a_byte_at_a_time_is_dropped() -> None:
    with running_server(client_timeout=0.3) as srv:
        with connect(srv) as sock:  # slowloris: headers that never end, one byte every 20 ms
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")

            def dropped() -> bool:
                try:
                    sock.sendall(b"a")
                except OSError:
                    return True
                return closed_by_server(sock)

            wait_for(dropped, "the server to drop a client that sends one byte at a time")
        with connect(srv) as sock:  # a body that trickles in
            sock.sendall(head("POST", "/v1/chat/completions", {"Content-Length": "1000"}) + b"{")
            wait_for(dropped, "the server to drop a client whose body trickles in")


def test_connections_beyond_the_cap_get_503_and_no_thread() -> None:
    with running_server(max_connections=3) as srv:
        before = threading.active_count()
        served = [connect(srv) for _ in range(3)]
        for sock in served:  # each is being served (its thread runs)
            sock.sendall(head("GET", "/v1/models", {}))
            assert response(sock)[0] == 200
        extra = [connect(srv) for _ in range(12)]  # idle, beyond the cap
        try:
            for sock in extra:
                status, headers, body = response(sock)
                assert status == 503 and body["error"]["code"] == "too_many_connections"
                assert headers["retry-after"] == "1"
            assert threading.active_count() - before <= 3
            assert srv.stats()["connections"] == {"open": 3, "refused": 12}
            served.pop().close()  # a slot frees up when a connection ends

            def served_again() -> bool:
                with connect(srv) as sock:
                    sock.sendall(head("GET", "/v1/models", {}))
                    return response(sock)[0] == 200

            wait_for(served_again, "a new connection to be served once one closed")
        finally:
            for sock in served + extra:
                sock.close()


# --- item 10: fault settings and counters ------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b'{"latency": NaN}', b'{"jitter": Infinity}', b'{"timeout_seconds": 1e9}', b'{"retry_after": -1}',
    b'{"drop_rate": 1.5}', b'{"timeout_rate": NaN}', b'{"error_rates": {"429": NaN}}',
    b'{"error_rates": {"abc": 0.1}}', b'{"error_rates": {"429": "lots"}}', b'{"latency": "1"}',
    b'{"latency": true}', b'{"error_rates": [429]}',
])
def test_bad_fault_settings_are_400_and_change_nothing(server: Any, body: bytes) -> None:
    status, reply = call(server, "POST", "/_oaipipe/faults", body)
    assert status == 400, reply
    message = reply["error"]["message"]
    assert message.startswith("Invalid fault settings: ")
    assert any(name in message for name in ("latency", "jitter", "timeout_seconds", "retry_after", "drop_rate",
                                            "timeout_rate", "error rate", "error_rates")), message
    assert server.server.faults == Faults()


def test_bad_fault_settings_are_refused_in_python() -> None:
    with pytest.raises(ValueError, match="latency must be a number of seconds between 0 and 3600, got nan"):
        Faults(latency=float("nan"))
    with pytest.raises(ValueError, match="drop_rate"):
        Faults().updated(drop_rate=float("inf"))
    with pytest.raises(ValueError, match="client_timeout"), running_server(client_timeout=float("nan")):
        pass


@pytest.mark.parametrize(("flag", "value"), [("--latency", "nan"), ("--drop-rate", "nan"),
                                             ("--timeout-seconds", "inf")])
def test_serve_refuses_non_finite_fault_flags(flag: str, value: str) -> None:
    exe = Path(sys.executable).parent / "oaipipe"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "oaipipe.cli"]
    proc = subprocess.run([*cmd, "serve", "--port", "0", flag, value], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OAIPIPE_SERVE_API_KEY": ""})
    assert proc.returncode == 2, proc.stderr
    assert f"Invalid value for '{flag}'" in proc.stderr and value in proc.stderr


def test_stats_do_not_grow_with_unknown_paths(server: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for i in range(30):
        for method, path in (("GET", f"/v1/nope-{i}"), ("POST", f"/x/{i}"), ("DELETE", f"/v1/models/m-{i}")):
            conn.request(method, path, body=b"{}" if method == "POST" else None)
            resp = conn.getresponse()
            resp.read()
            assert resp.status in (404, 405)
    assert server.stats()["by_path"] == {"(unknown path)": 60, "/v1/models/{model}": 30}


# --- item 11 (server side): special-token strings are text -------------------------------------------------


def test_serve_answers_a_prompt_holding_special_token_strings(server: Any) -> None:
    client = OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    text = "Please repeat <|endoftext|> and <|fim_prefix|> literally."
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    assert reply.choices[0].message.content and reply.usage.prompt_tokens > 10
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens
    resp = client.responses.create(model="gpt-4o-mini", input=f"Say {text}")
    assert resp.status == "completed" and resp.usage is not None and resp.usage.input_tokens > 10

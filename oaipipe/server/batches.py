"""``/v1/batches``: a JSONL file of requests processed in the background, without injected faults.

Lifecycle: ``validating`` → ``in_progress`` → ``finalizing`` → ``completed`` (``failed`` when the input file
itself is malformed; ``cancelling`` → ``cancelled`` on cancel). Requests that fail (a bad body, an unknown
model) go to the error file with their status code; the others to the output file.

Each line goes through the same handler as the HTTP endpoint (:func:`oaipipe.server.inference.chat_completion`
or :func:`oaipipe.server.responses.create_response`), with the prompt cache of the key that created the batch
and the model shutdowns, but without injected faults; ``stream: true`` is refused per line.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from . import inference, responses
from .app import OaipipeServer, Reply, Request, extension
from .errors import ApiError, require_object, require_str
from .files import FileStore, _list_reply
from .options import CallContext

__all__ = ["Batches"]

#: the endpoints batched here, each a function ``(body, ctx) → response object``
ENDPOINTS: dict[str, Callable[[Any, CallContext], dict[str, Any]]] = {
    "/v1/responses": responses.create_response,
    "/v1/chat/completions": inference.chat_completion,
}
#: endpoints OpenAI's Batch API also takes, which this server does not implement
OTHER_OPENAI_ENDPOINTS = ("/v1/embeddings", "/v1/completions", "/v1/moderations")
TERMINAL = ("completed", "failed", "cancelled", "expired")


class BatchInputError(Exception):
    def __init__(self, message: str, line: int | None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message, self.line, self.code = message, line, code


def parse_batch_input(data: bytes, endpoint: str) -> list[dict[str, Any]]:
    """The request lines of a batch input file; raises :class:`BatchInputError` naming the bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchInputError("The input file is not UTF-8 text.", None, "invalid_file_format") from None
    lines: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            raise BatchInputError(f"Line {n} is not valid JSON.", n, "invalid_json_line") from None
        if not isinstance(row, dict):
            raise BatchInputError(f"Line {n} is not a JSON object.", n, "invalid_json_line")
        custom_id = row.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise BatchInputError(f"Line {n} has no 'custom_id' string.", n, "missing_required_parameter")
        if custom_id in seen:
            raise BatchInputError(f"Line {n}: custom_id '{custom_id}' is used twice; custom_id values must be "
                                  "unique.", n, "duplicate_custom_id")
        seen.add(custom_id)
        if row.get("method") != "POST":
            raise BatchInputError(f"Line {n}: 'method' must be POST.", n, "invalid_method")
        if row.get("url") != endpoint:
            raise BatchInputError(f"Line {n}: 'url' is {row.get('url')!r} but the batch endpoint is {endpoint}; "
                                  "every line must use the batch's endpoint.", n, "mismatched_url")
        lines.append(row)
    if not lines:
        raise BatchInputError("The input file contains no requests.", None, "empty_file")
    return lines


def _batch_body(body: Any) -> Any:
    """A line's body, refused when it asks for a stream (a batch line has no connection to stream to)."""
    if isinstance(body, dict) and body.get("stream"):
        raise ApiError(400, "Invalid 'stream': a batch request cannot be streamed; leave stream out of batch "
                       "lines.", param="stream", code="invalid_value")
    return body


def _usage_counts(u: dict[str, Any]) -> dict[str, int]:
    """The counts of a chat or Responses usage block, by the batch usage's names."""
    inp = int(u.get("prompt_tokens", u.get("input_tokens", 0)) or 0)
    out = int(u.get("completion_tokens", u.get("output_tokens", 0)) or 0)
    inp_details = u.get("prompt_tokens_details") or u.get("input_tokens_details") or {}
    out_details = u.get("completion_tokens_details") or u.get("output_tokens_details") or {}
    return {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out,
            "cached_tokens": int(inp_details.get("cached_tokens") or 0),
            "reasoning_tokens": int(out_details.get("reasoning_tokens") or 0)}


class _Cancelled(Exception):
    """A cancel seen by a batch's worker: the batch ends as cancelled."""


class _Answers:
    """What a batch's lines produced: output lines, error lines, the summed usage and the model."""

    def __init__(self) -> None:
        self.outputs: list[str] = []
        self.errors: list[str] = []
        self.usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cached_tokens": 0,
                      "reasoning_tokens": 0}
        self.model: Any = None

    def add(self, status: int, body: dict[str, Any], text: str) -> None:
        if status != 200:
            self.errors.append(text)
            return
        self.outputs.append(text)
        for name, value in _usage_counts(body.get("usage") or {}).items():
            self.usage[name] += value
        self.model = self.model or body.get("model")


def _answer_line(call: Callable[[Any, CallContext], dict[str, Any]], row: dict[str, Any],
                 ctx: CallContext) -> tuple[int, dict[str, Any], str]:
    """(status, body, output line) of one input line: the endpoint's answer, or its error in OpenAI's shape."""
    request_id = "req_" + secrets.token_hex(12)
    try:
        body = call(_batch_body(row.get("body")), ctx)
        status = 200
    except ApiError as exc:
        body, status = exc.body(), exc.status
    except Exception as exc:  # noqa: BLE001 - one bad line must not stop the batch
        body, status = ApiError(500, f"The local server failed: {exc}").body(), 500
    line = {"id": "batch_req_" + secrets.token_hex(12), "custom_id": row["custom_id"],
            "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}
    return status, body, json.dumps(line, ensure_ascii=False)


class Batches:
    def __init__(self, server: OaipipeServer, files: FileStore) -> None:
        self.server = server
        self.files = files
        self.batches: dict[str, dict[str, Any]] = {}
        self.cancel_flags: dict[str, threading.Event] = {}
        self.contexts: dict[str, CallContext] = {}
        self.lock = threading.Lock()

    def _update(self, batch_id: str, **changes: Any) -> None:
        with self.lock:
            self.batches[batch_id].update(changes)

    def create(self, body: dict[str, Any], ctx: CallContext | None = None) -> dict[str, Any]:
        """Create a batch; its lines run with ``ctx`` (the creator's prompt-cache namespace, no faults)."""
        body = require_object(body)
        file_id = require_str(body, "input_file_id")
        try:
            obj = self.files.get(file_id)
        except ApiError:
            raise ApiError(400, f"Invalid 'input_file_id': no such file {file_id}; upload it with purpose "
                           "'batch' first.", param="input_file_id", code="invalid_file_id") from None
        if obj["purpose"] != "batch":
            raise ApiError(400, f"File {file_id} has purpose '{obj['purpose']}'; batch input files need purpose "
                           "'batch'.", param="input_file_id", code="invalid_file_purpose")
        endpoint = body.get("endpoint")
        if endpoint in OTHER_OPENAI_ENDPOINTS:
            raise ApiError(400, f"oaipipe serve does not implement {endpoint}, so it cannot batch it; it batches "
                           + " and ".join(ENDPOINTS) + ".", param="endpoint", code="unsupported_value")
        if endpoint not in ENDPOINTS:
            raise ApiError(400, f"Invalid 'endpoint': {endpoint!r}; the local server batches "
                           + " and ".join(ENDPOINTS) + ".", param="endpoint", code="invalid_value")
        if body.get("completion_window") != "24h":
            raise ApiError(400, "Invalid 'completion_window': only '24h' is supported.", param="completion_window",
                           code="invalid_value")
        now = int(time.time())
        batch_id = "batch_" + secrets.token_hex(12)
        batch = {
            "id": batch_id, "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": file_id,
            "completion_window": "24h", "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": now, "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None,
            "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
            "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"), "model": None, "usage": None,
        }
        with self.lock:
            self.batches[batch_id] = batch
            self.cancel_flags[batch_id] = threading.Event()
            self.contexts[batch_id] = ctx or self.server.call_context(faults=False)
        threading.Thread(target=self._run, args=(batch_id,), name=f"batch-{batch_id}", daemon=True).start()
        return json.loads(json.dumps(batch))

    def _finish_cancel(self, batch_id: str) -> None:
        self._update(batch_id, status="cancelled", cancelled_at=int(time.time()))

    def _run(self, batch_id: str) -> None:
        """The worker of one batch: validating, in_progress (line by line), finalizing, completed; a cancel
        seen at any of those waits ends it as cancelled, any failure as failed (saying why)."""
        cfg = self.server.config
        cancel = self.cancel_flags[batch_id]
        batch = self.get(batch_id)
        try:
            self._pause(cancel, cfg.batch_seconds / 3)
            lines = self._parse_input(batch_id, batch)
            if lines is None:
                return None
            self._start(batch_id, len(lines))
            answers = self._answer_lines(batch_id, batch, lines)
            self._update(batch_id, status="finalizing", finalizing_at=int(time.time()))
            self._pause(cancel, cfg.batch_seconds / 3)
            self._complete(batch_id, answers)
        except _Cancelled:
            self._finish_cancel(batch_id)
        except Exception as exc:  # noqa: BLE001 - a failed batch must say why
            self._update(batch_id, status="failed", failed_at=int(time.time()), errors={
                "object": "list", "data": [{"code": "server_error", "message": f"The local server failed: {exc}",
                                            "param": None, "line": None}]})
        return None

    @staticmethod
    def _pause(cancel: threading.Event, seconds: float) -> None:
        """Wait ``seconds`` (the batch's simulated work); a cancel during the wait ends the batch."""
        if cancel.wait(seconds) or cancel.is_set():
            raise _Cancelled

    def _parse_input(self, batch_id: str, batch: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The input file's lines, or None after marking the batch failed with the line at fault."""
        try:
            return parse_batch_input(self.files.content(batch["input_file_id"]), batch["endpoint"])
        except BatchInputError as exc:
            self._update(batch_id, status="failed", failed_at=int(time.time()), errors={
                "object": "list", "data": [{"code": exc.code, "message": exc.message, "param": None,
                                            "line": exc.line}]})
            return None

    def _start(self, batch_id: str, total: int) -> None:
        """validating -> in_progress, unless a cancel came first (checked and changed under the lock)."""
        with self.lock:
            if self.cancel_flags[batch_id].is_set():
                raise _Cancelled
            self.batches[batch_id].update(status="in_progress", in_progress_at=int(time.time()),
                                          request_counts={"total": total, "completed": 0, "failed": 0})

    def _answer_lines(self, batch_id: str, batch: dict[str, Any], lines: list[dict[str, Any]]) -> _Answers:
        """Every line answered in order (each one a successful or a failed output line), counted as it goes."""
        call = ENDPOINTS[batch["endpoint"]]
        ctx = self.contexts[batch_id]
        answers = _Answers()
        per_line = self.server.config.batch_seconds / 3 / max(len(lines), 1)
        for row in lines:
            self._pause(self.cancel_flags[batch_id], per_line)
            status, body, text = _answer_line(call, row, ctx)
            with self.lock:
                counts = self.batches[batch_id]["request_counts"]
                counts["completed" if status == 200 else "failed"] += 1
            answers.add(status, body, text)
        return answers

    def _complete(self, batch_id: str, answers: _Answers) -> None:
        """The output and error files written, and the batch completed with its summed usage."""
        outputs, errors, usage = answers.outputs, answers.errors, answers.usage
        out_id = self.files.add(("\n".join(outputs) + "\n").encode("utf-8"), f"{batch_id}_output.jsonl",
                                "batch_output")["id"] if outputs else None
        err_id = self.files.add(("\n".join(errors) + "\n").encode("utf-8"), f"{batch_id}_error.jsonl",
                                "batch_output")["id"] if errors else None
        self._update(batch_id, status="completed", completed_at=int(time.time()), output_file_id=out_id,
                     error_file_id=err_id, model=answers.model, usage={
                         "input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
                         "total_tokens": usage["total_tokens"],
                         "input_tokens_details": {"cached_tokens": usage["cached_tokens"]},
                         "output_tokens_details": {"reasoning_tokens": usage["reasoning_tokens"]}})

    def get(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id", code=None)
            return json.loads(json.dumps(batch))

    def cancel(self, batch_id: str) -> dict[str, Any]:
        self.get(batch_id)  # 404 for an unknown batch
        with self.lock:  # check and change together: a batch completing in between must stay completed
            status = self.batches[batch_id]["status"]
            if status in TERMINAL or status == "cancelling":
                raise ApiError(400, f"Cannot cancel a batch with status '{status}'.", param="batch_id",
                               code="invalid_state")
            self.cancel_flags[batch_id].set()
            self.batches[batch_id].update(status="cancelling", cancelling_at=int(time.time()))
        return self.get(batch_id)

    def listing(self) -> list[dict[str, Any]]:
        with self.lock:
            items = [json.loads(json.dumps(b)) for b in self.batches.values()]
        return list(reversed(items))


@extension
def add_batch_routes(server: OaipipeServer) -> None:
    batches = Batches(server, server.files)  # type: ignore[attr-defined]
    server.batches = batches  # type: ignore[attr-defined]
    server.route("POST", "/v1/batches", lambda req: Reply(batches.create(
        req.json(), server.call_context(req.headers, faults=False))))
    server.route("GET", "/v1/batches", lambda req: _list_reply(batches.listing(), req, 20))
    server.route("GET", "/v1/batches/{batch_id}", lambda req: Reply(batches.get(req.params["batch_id"])))

    def cancel(req: Request) -> Reply:
        return Reply(batches.cancel(req.params["batch_id"]))

    server.route("POST", "/v1/batches/{batch_id}/cancel", cancel)

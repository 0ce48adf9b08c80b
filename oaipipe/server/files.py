"""``/v1/files``: upload (multipart), list, retrieve, content, delete. Files live on disk under the data dir."""

from __future__ import annotations

import email.parser
import email.policy
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from ..fsutil import write_bytes_atomic
from .app import OaipipeServer, Reply, Request, extension
from .errors import ApiError, not_found

__all__ = ["FileStore"]

PURPOSES = ("fine-tune", "batch", "assistants", "vision", "user_data", "evals")
#: purposes of files the server writes itself
OUTPUT_PURPOSES = ("fine-tune-results", "batch_output")


class FileStore:
    """Files as ``<id>.bin`` (bytes) + ``<id>.json`` (the file object) in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def add(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = "file-" + secrets.token_hex(12)
        obj = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
               "status_details": None}
        with self._lock:
            self._write(self.root / f"{file_id}.bin", data)
            self._write(self.root / f"{file_id}.json", json.dumps(obj).encode("utf-8"))
        return obj

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        write_bytes_atomic(path, data, fsync=False)

    def _meta_path(self, file_id: str) -> Path:
        if not file_id.startswith("file-") or not file_id[5:].isalnum():
            raise not_found("File", file_id)
        return self.root / f"{file_id}.json"

    def get(self, file_id: str) -> dict[str, Any]:
        path = self._meta_path(file_id)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise not_found("File", file_id) from None

    def content(self, file_id: str) -> bytes:
        self.get(file_id)
        return (self.root / f"{file_id}.bin").read_bytes()

    def delete(self, file_id: str) -> None:
        self.get(file_id)
        with self._lock:
            for suffix in (".json", ".bin"):
                (self.root / f"{file_id}{suffix}").unlink(missing_ok=True)

    def list(self) -> list[dict[str, Any]]:
        out = []
        for path in self.root.glob("file-*.json"):
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return sorted(out, key=lambda o: (o["created_at"], o["id"]), reverse=True)


def _parse_multipart(req: Request) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    ctype = req.headers.get("Content-Type") or ""
    if not ctype.lower().startswith("multipart/form-data"):
        raise ApiError(400, "Upload files as multipart/form-data with fields 'file' and 'purpose'.",
                       code="invalid_request")
    head = f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + req.body)
    if not message.is_multipart():
        raise ApiError(400, "The multipart body could not be parsed (missing boundary?).", code="invalid_request")
    fields: dict[str, str] = {}
    upload: tuple[str, bytes] | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if name == "file":
            upload = (filename or "upload", data)
        else:
            fields[str(name)] = data.decode("utf-8", "replace")
    return fields, upload


def _list_reply(items: list[dict[str, Any]], req: Request, default_limit: int) -> Reply:
    after = req.arg("after")
    if after:
        ids = [o["id"] for o in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    limit = req.int_arg("limit", default_limit)
    page = items[:limit]
    return Reply({"object": "list", "data": page, "has_more": len(items) > limit,
                  "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})


@extension
def add_file_routes(server: OaipipeServer) -> None:
    store = FileStore(server.data_dir / "files")
    server.files = store  # type: ignore[attr-defined]

    def upload(req: Request) -> Reply:
        fields, file = _parse_multipart(req)
        purpose = fields.get("purpose")
        if not purpose:
            raise ApiError(400, "Missing required parameter: 'purpose' (fine-tune or batch).", param="purpose",
                           code="missing_required_parameter")
        if purpose not in PURPOSES:
            raise ApiError(400, f"Invalid 'purpose': {purpose!r}; use one of {', '.join(PURPOSES)}.",
                           param="purpose", code="invalid_value")
        if file is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        filename, data = file
        if purpose in ("fine-tune", "batch") and not filename.lower().endswith(".jsonl"):
            raise ApiError(400, f"Invalid file format for {purpose}: {filename!r}. Upload a .jsonl file.",
                           param="file", code="invalid_file_format")
        return Reply(store.add(data, filename, purpose))

    def listing(req: Request) -> Reply:
        items = store.list()
        purpose = req.arg("purpose")
        if purpose:
            items = [o for o in items if o["purpose"] == purpose]
        if req.arg("order") == "asc":
            items.reverse()
        return _list_reply(items, req, 10_000)

    def retrieve(req: Request) -> Reply:
        return Reply(store.get(req.params["file_id"]))

    def content(req: Request) -> Reply:
        return Reply(raw=store.content(req.params["file_id"]), content_type="application/octet-stream")

    def delete(req: Request) -> Reply:
        store.delete(req.params["file_id"])
        return Reply({"id": req.params["file_id"], "object": "file", "deleted": True})

    server.route("POST", "/v1/files", upload)
    server.route("GET", "/v1/files", listing)
    server.route("GET", "/v1/files/{file_id}", retrieve)
    server.route("DELETE", "/v1/files/{file_id}", delete)
    server.route("GET", "/v1/files/{file_id}/content", content)

"""Local fine-tuning: the engine "learns" a chat dataset by remembering it.

A locally trained model answers a prompt with the assistant reply of the nearest training prompt (same
system prompt preferred), so the train → use loop is observable offline. Nothing here pretends to be a
neural network: the store is a JSON file per model under ``$OAIPIPE_HOME/models``.

Model ids look like OpenAI's: ``ft:<base>:local:<suffix>:<short id>``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fsutil import write_text_atomic
from ..home import home_dir

__all__ = ["ENGINE_LABEL", "LocalModel", "is_engine_model", "list_local_models", "load_local_model", "model_store",
           "train_local_model"]

_WORD = re.compile(r"[\w']+", re.UNICODE)

#: the engine's mark in the model ids it answers with: ``local:<model>``, and ``ft:<base>:local:<suffix>:<id>``
#: for a model trained here
ENGINE_LABEL = "local"


def is_engine_model(model_id: str) -> bool:
    """Whether ``model_id`` is one of the engine's own labels (``local:<model>``, ``ft:<base>:local:...``):
    never an OpenAI model, so no list price applies to it."""
    parts = model_id.split(":")
    return parts[0] == ENGINE_LABEL or (parts[0] == "ft" and len(parts) > 2 and parts[2] == ENGINE_LABEL)


def model_store(store: Path | None = None) -> Path:
    root = store or home_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text"))
    return "" if content is None else str(content)


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


@dataclass
class LocalModel:
    """A trained local model: (system, prompt) → reply pairs."""

    id: str
    base_model: str
    examples: list[dict[str, str]]
    created: int
    method: str = "supervised"

    def answer(self, messages: list[dict[str, Any]]) -> str | None:
        """The trained reply of the closest training prompt, or ``None`` if the model knows nothing."""
        if not self.examples:
            return None
        system = next((_text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")), "")
        user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        norm = _normalise(user)
        for ex in self.examples:  # exact prompt match first
            if _normalise(ex["prompt"]) == norm and (not ex.get("system") or ex["system"] == system or not system):
                return ex["reply"]
        words = _words(user)
        best, best_score = None, -1.0
        for ex in self.examples:
            other = _words(ex["prompt"])
            union = words | other
            score = len(words & other) / len(union) if union else 0.0
            if system and ex.get("system") == system:
                score += 0.01
            if score > best_score:
                best, best_score = ex, score
        return best["reply"] if best else None


def _examples_from(rows: list[dict[str, Any]], method: str) -> list[dict[str, str]]:
    """Pairs from chat fine-tuning rows (``{"messages": [...]}``) or DPO rows (preferred output)."""
    out: list[dict[str, str]] = []
    for row in rows:
        if "messages" in row:
            messages = row["messages"]
            system = ""
            prompt = None
            for m in messages:
                role, text = m.get("role"), _text_of(m.get("content"))
                if role in ("system", "developer"):
                    system = text
                elif role == "user":
                    prompt = text
                elif role == "assistant" and prompt is not None and m.get("weight", 1) != 0:
                    out.append({"system": system, "prompt": prompt, "reply": text})
        elif "input" in row and "preferred_output" in row:
            msgs = row["input"].get("messages", [])
            system = next((_text_of(m.get("content")) for m in msgs if m.get("role") in ("system", "developer")), "")
            prompt = next((_text_of(m.get("content")) for m in reversed(msgs) if m.get("role") == "user"), "")
            preferred = row["preferred_output"]
            reply = _text_of(preferred[-1].get("content")) if preferred else ""
            out.append({"system": system, "prompt": prompt, "reply": reply})
    return out


def train_local_model(rows: list[dict[str, Any]], *, base_model: str, suffix: str | None = None,
                      method: str = "supervised", store: Path | None = None) -> str:
    """Learn ``rows`` (fine-tuning JSONL rows) and return the new model id."""
    examples = _examples_from(rows, method)
    digest = hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest()[:8]
    clean_suffix = re.sub(r"[^A-Za-z0-9_-]", "-", suffix or "oaipipe")[:40]
    base = base_model.split(":")[1] if base_model.startswith("ft:") else base_model
    base = base.removeprefix("local:")
    model_id = f"ft:{base}:local:{clean_suffix}:{digest}"
    model = {"id": model_id, "base_model": base, "examples": examples, "created": int(time.time()),
             "method": method}
    root = model_store(store)
    path = root / (_file_name(model_id))
    write_text_atomic(path, json.dumps(model, ensure_ascii=False), fsync=False, newline=None)
    return model_id


def _file_name(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", model_id) + ".json"


#: models already read, by file: (mtime_ns, size) of the file when read, and the model
_LOADED: dict[Path, tuple[tuple[int, int], LocalModel]] = {}


def load_local_model(model_id: str, store: Path | None = None) -> LocalModel | None:
    """The trained model ``model_id`` (``None`` if it was never trained here). The file is read once and
    again only when it changes: every chat call to an ``ft:`` model asks for it."""
    path = model_store(store) / _file_name(model_id)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    known = _LOADED.get(path)
    if known is not None and known[0] == stamp:
        return known[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = LocalModel(id=data["id"], base_model=data["base_model"], examples=data["examples"],
                           created=data["created"], method=data.get("method", "supervised"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        from .errors import ModelNotFound

        raise ModelNotFound(f"The model '{model_id}' cannot be loaded: its file {path} is damaged "
                            f"({type(exc).__name__}: {exc}); train it again (oaipipe train) or delete the "
                            "file.") from None
    _LOADED[path] = (stamp, model)
    return model


def list_local_models(store: Path | None = None) -> list[LocalModel]:
    out = []
    for path in sorted(model_store(store).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            out.append(LocalModel(id=data["id"], base_model=data["base_model"], examples=data["examples"],
                                  created=data["created"], method=data.get("method", "supervised")))
        except (OSError, ValueError, KeyError):
            continue
    return out

"""Named assistant presets: instructions, model and parameters kept in a local YAML/JSON registry.

OpenAI's hosted Assistants API was shut down on 2026-08-26. oaipipe keeps the useful part of it — a
named bundle of instructions, model, temperature and response format — as a *local* preset that maps
onto a plain chat (or Responses) call. A step names a preset with ``assistant: support-agent``.

File format (``assistants.yaml``; a ``.json`` file with the same structure works too)::

    assistants:
      support-agent:
        description: Friendly first-line support
        instructions: You are a helpful support agent. Answer in two sentences.
        model: gpt-6-luna          # a reasoning model: no temperature (OpenAI refuses it)
        max_tokens: 120

The ``assistants:`` wrapper is optional (a top-level mapping of name → preset works), and a list of
presets each with a ``name`` key is accepted as well (the seed module's ``assistants.json`` shape).

Lookup order (the first that exists wins): an explicit path (``--file``), the pipeline's
``assistants:`` key, ``assistants.yaml``/``assistants.json`` next to the pipeline file, then
``$OAIPIPE_HOME/assistants.yaml``/``.json``.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .home import home_dir
from .textfile import read_text, refused_character, yaml_position

__all__ = [
    "AssistantPreset",
    "find_registry",
    "get_preset",
    "load_presets",
    "schema_response_format",
]

_FILE_NAMES = ("assistants.yaml", "assistants.yml", "assistants.json")


class AssistantPreset(BaseModel):
    """One named preset. Every field but ``name`` is optional; a step's own options win over it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = Field("", description="One line shown by `oaipipe assistants`")
    instructions: str | None = Field(None, description="The system message")
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    json_schema: dict[str, Any] | None = Field(None, description="Reply as JSON following this schema")
    response_format: dict[str, Any] | None = Field(None, description="Raw OpenAI response_format (wins over json_schema)")

    def effective_response_format(self) -> dict[str, Any] | None:
        if self.response_format is not None:
            return self.response_format
        if self.json_schema is not None:
            return schema_response_format(self.json_schema, default_name=self.name)
        return None


def schema_response_format(schema: dict[str, Any], *, default_name: str = "reply") -> dict[str, Any]:
    """OpenAI's ``response_format`` block for a JSON schema.

    ``schema`` is either a bare JSON schema (``{"type": "object", ...}``) or OpenAI's wrapper
    (``{"name": ..., "schema": {...}, "strict": ...}``).
    """
    if isinstance(schema.get("schema"), dict):
        name = str(schema.get("name") or default_name)
        inner = schema["schema"]
        strict = bool(schema.get("strict", True))
    else:
        name, inner, strict = default_name, schema, True
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64] or "reply"
    return {"type": "json_schema", "json_schema": {"name": safe, "schema": inner, "strict": strict}}


def find_registry(
    explicit: str | Path | None = None,
    *,
    pipeline_setting: str | Path | None = None,
    base_dir: Path | None = None,
) -> Path | None:
    """The preset file to use, following the lookup order in the module docstring; ``None`` if none.

    An explicit path or the pipeline's ``assistants:`` key that does not exist is a :class:`ConfigError`
    (the user named it); the implicit locations are simply skipped.
    """
    for named, what in ((explicit, "--file"), (pipeline_setting, "the pipeline's `assistants:` key")):
        if named:
            path = Path(named).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            if not path.is_file():
                raise ConfigError(
                    f"assistants file not found: {path} (from {what})",
                    hint="check the path (relative paths are relative to the pipeline file) "
                    "or copy examples/assistants.yaml there",
                )
            return path
    folders = ([base_dir] if base_dir is not None else []) + [home_dir()]
    for folder in folders:
        for name in _FILE_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def load_presets(path: str | Path) -> dict[str, AssistantPreset]:
    """Read a preset file; a malformed file is a :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        text = read_text(path, what="the assistants file")
    except OSError as exc:
        raise ConfigError(f"cannot read assistants file: {exc}", file=path) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except yaml.reader.ReaderError as exc:
        raise refused_character(exc, text, path, what="the assistants file") from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        line = getattr(exc, "lineno", None)
        if isinstance(exc, yaml.YAMLError):
            line = yaml_position(exc, text)[0]
        raise ConfigError(f"not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}",
                          file=path, line=line, hint="fix the syntax; see examples/assistants.yaml") from None
    if isinstance(data, dict) and "assistants" in data:
        data = data["assistants"]
    if data is None:
        data = {}
    entries: list[tuple[str, Any]]
    if isinstance(data, dict):
        entries = list(data.items())
    elif isinstance(data, list):
        entries = []
        for i, item in enumerate(data):
            if not isinstance(item, dict) or not item.get("name"):
                raise ConfigError(f"entry {i} of the preset list has no `name:`", file=path,
                                  hint="each preset needs a name, e.g. `- name: support-agent`")
            entries.append((str(item["name"]), {k: v for k, v in item.items() if k != "name"}))
    else:
        raise ConfigError("expected a mapping of preset names to presets", file=path,
                          hint="see examples/assistants.yaml for the format")
    presets: dict[str, AssistantPreset] = {}
    for name, body in entries:
        if not isinstance(body, dict):
            raise ConfigError(f"preset '{name}' must be a mapping (instructions, model, ...)", file=path,
                              key=f"assistants.{name}")
        body = dict(body)
        body.pop("id", None)  # the seed's hosted-assistant ids mean nothing now
        try:
            presets[str(name)] = AssistantPreset(name=str(name), **body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"preset '{name}' is invalid: {problems}", file=path, key=f"assistants.{name}",
                              hint="known keys: description, instructions, model, temperature, max_tokens, "
                              "json_schema, response_format") from None
    return presets


def get_preset(
    name: str,
    *,
    explicit: str | Path | None = None,
    pipeline_setting: str | Path | None = None,
    base_dir: Path | None = None,
) -> AssistantPreset:
    """The preset called ``name``; an unknown name is a :class:`ConfigError` that lists the known ones."""
    path = find_registry(explicit, pipeline_setting=pipeline_setting, base_dir=base_dir)
    if path is None:
        raise ConfigError(
            f"assistant preset '{name}' requested, but no assistants file was found",
            hint="create assistants.yaml next to the pipeline file (see examples/assistants.yaml), "
            "or set `assistants: path/to/file.yaml` in the pipeline",
        )
    presets = load_presets(path)
    if name not in presets:
        close = difflib.get_close_matches(name, list(presets), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        hint += f"presets in {path}: {', '.join(sorted(presets)) or '(none)'}"
        raise ConfigError(f"unknown assistant preset '{name}'", file=path, hint=hint)
    return presets[name]

"""pipeline.yaml: loading (with line numbers), ``${env:VAR}``, ``--set`` overrides, and validation.

The top level is validated here (``PipelineConfig``, ``extra="forbid"``). Each block that names a plugin
(``backend``, ``source``, each step, each sink, ``train``) is validated by that plugin's own ``Options``
model when the pipeline is built (:mod:`oaipipe.pipeline`), with errors pointing at the file and line.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

__all__ = [
    "LoadedConfig",
    "PipelineConfig",
    "RunSettings",
    "apply_overrides",
    "interpolate_env",
    "load_config",
    "validation_error",
]


class RunSettings(BaseModel):
    """The optional ``run:`` block: where run directories go and when to give up."""

    model_config = ConfigDict(extra="forbid")

    dir: str = Field("runs", description="Folder for run directories (relative to the pipeline file)")
    max_failures: int | None = Field(None, ge=0, description="Abort after this many failed records")
    max_cost: float | None = Field(None, gt=0, allow_inf_nan=False,
                                   description="Stop scheduling records past this many USD (finite, > 0)")
    cache: bool = Field(True, description="Reuse identical calls from the response cache")
    cache_dir: str | None = Field(None, description="Defaults to .oaipipe/cache next to the pipeline file")
    offline_fallback: bool = Field(
        True, description="Use the local engine when the backend needs an OpenAI key and none is set"
    )


class PipelineConfig(BaseModel):
    """The top level of pipeline.yaml. Plugin blocks are plain mappings here; their plugin validates them."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("pipeline", description="Names the run directory and the dialogue")
    description: str | None = None
    plugins: list[str] = Field(default_factory=list, description="Extra plugin modules: .py paths or dotted names")
    disable_plugins: list[str] = Field(default_factory=list, description="Plugin names to switch off")
    assistants: str | None = Field(None, description="Path of an assistants.yaml/.json preset registry")
    backend: dict[str, Any] = Field(default_factory=lambda: {"type": "local"})
    source: dict[str, Any]
    steps: list[dict[str, Any]] = Field(default_factory=list)
    sinks: list[dict[str, Any]] = Field(default_factory=list)
    train: dict[str, Any] | None = None
    prices: dict[str, dict[str, float]] | None = Field(
        None, description="USD per 1M tokens by model: {model: {input: x, output: y}}; overrides the table"
    )
    run: RunSettings = Field(default_factory=RunSettings)


# --- YAML with line numbers ---------------------------------------------------------------------


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the (line, column) of every mapping key and sequence item."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping = {}
    positions = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        value = loader.construct_object(value_node, deep=True)
        if key in mapping:
            raise ConfigError(
                f"key '{key}' appears twice in the same block",
                line=key_node.start_mark.line + 1,
                column=key_node.start_mark.column + 1,
                hint="remove one of them",
            )
        mapping[key] = value
        positions[key] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    loader._positions[id(mapping)] = (mapping, positions)  # type: ignore[attr-defined]
    return mapping


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode, deep: bool = False) -> list:
    seq = [loader.construct_object(child, deep=True) for child in node.value]
    positions = {i: (child.start_mark.line + 1, child.start_mark.column + 1) for i, child in enumerate(node.value)}
    loader._positions[id(seq)] = (seq, positions)  # type: ignore[attr-defined]
    return seq


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _flatten_positions(root: Any, table: dict[int, tuple[Any, dict]]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}

    def walk(obj: Any, prefix: str) -> None:
        entry = table.get(id(obj))
        if entry is None or entry[0] is not obj:
            return
        _, positions = entry
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in items:
            path = f"{prefix}.{k}" if prefix else str(k)
            if k in positions:
                out[path] = positions[k]
            walk(v, path)

    walk(root, "")
    return out


@dataclass
class LoadedConfig:
    """A parsed pipeline file: the validated top level, the raw data, and where each key was."""

    path: Path
    config: PipelineConfig
    data: dict[str, Any]
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: dotted keys given with --set: they have no line in the file
    overridden: set[str] = field(default_factory=set)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def where(self, key: str) -> tuple[int | None, int | None]:
        """(line, column) of a dotted key, or of its closest parent that has one (none for --set keys)."""
        if any(key == k or key.startswith(k + ".") for k in self.overridden):
            return (None, None)
        probe = key
        while probe:
            if probe in self.positions:
                return self.positions[probe]
            probe = probe.rsplit(".", 1)[0] if "." in probe else ""
        return (None, None)


def parse_yaml(text: str, file: str) -> tuple[Any, dict[str, tuple[int, int]]]:
    loader = _LineLoader(text)
    loader._positions = {}  # type: ignore[attr-defined]
    try:
        data = loader.get_single_data()
    except ConfigError as exc:
        exc.file = file
        raise ConfigError(exc.message.split(": ", 1)[-1] if exc.message else "", file=file,
                          line=exc.line, column=exc.column, hint=exc.hint) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        context_mark = getattr(exc, "context_mark", None)
        if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
            context += f" that starts at line {context_mark.line + 1}"  # where to look for the missing part
        msg = f"malformed YAML: {problem}" + (f" ({context})" if context else "")
        raise ConfigError(
            msg,
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
            hint="check indentation (spaces, not tabs), colons after keys, and quotes around text with ': '",
        ) from None
    finally:
        loader.dispose()
    positions = _flatten_positions(data, loader._positions)  # type: ignore[attr-defined]
    return data, positions


# --- ${env:VAR} ---------------------------------------------------------------------------------

_ENV_RE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def interpolate_env(value: Any, *, key: str = "", environ: dict[str, str] | None = None,
                    missing: list[str] | None = None) -> Any:
    """Replace ``${env:VAR}`` (and ``${env:VAR:-default}``) in every string of ``value``.

    A variable that is not set becomes ``None`` when it is the whole value (so an unset
    ``OPENAI_API_KEY`` means "no key"), and is reported in ``missing`` when it is part of a longer string.
    """
    env = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {k: interpolate_env(v, key=f"{key}.{k}" if key else str(k), environ=env, missing=missing)
                for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, key=f"{key}.{i}", environ=env, missing=missing) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${env:" not in value:
        return value
    whole = _ENV_RE.fullmatch(value.strip())
    if whole:
        name, default = whole.group(1), whole.group(2)
        got = env.get(name)
        if got:
            return got
        return default if default is not None else None

    def sub(m: re.Match[str]) -> str:
        got = env.get(m.group(1))
        if got:
            return got
        if m.group(2) is not None:
            return m.group(2)
        if missing is not None:
            missing.append(f"{key} needs ${{env:{m.group(1)}}}")
        return ""

    return _ENV_RE.sub(sub, value)


# --- --set key.path=value -----------------------------------------------------------------------


def _coerce(text: str) -> Any:
    """``--set`` values are YAML scalars: 8 → int, true → bool, null → None, [a, b] → list."""
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, dict) and not text.lstrip().startswith("{"):
        return text  # "Reply to: {text}" is a string, not a mapping
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (list items by index: ``steps.1.prompt=...``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE", hint="e.g. --set backend.base_url=http://127.0.0.1:8080/v1")
        path, raw = item.split("=", 1)
        parts = [p for p in path.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r} has an empty key")
        target: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(target, list):
                try:
                    target = target[int(part)]
                except (ValueError, IndexError):
                    raise ConfigError(f"--set {path}: '{part}' is not an index of the list at "
                                      f"{'.'.join(parts[:i]) or 'top level'}") from None
                continue
            if not isinstance(target, dict):
                raise ConfigError(f"--set {path}: '{'.'.join(parts[:i])}' is not a mapping",
                                  hint="set the key itself, or a key of a mapping below it")
            if part not in target or target[part] is None:
                target[part] = [] if nxt.isdigit() else {}
            target = target[part]
        last = parts[-1]
        value = _coerce(raw)
        if isinstance(target, list):
            try:
                target[int(last)] = value
            except (ValueError, IndexError):
                raise ConfigError(f"--set {path}: '{last}' is not an index of that list") from None
        elif isinstance(target, dict):
            target[last] = value
        else:
            raise ConfigError(f"--set {path}: '{'.'.join(parts[:-1])}' is not a mapping")
    return data


# --- validation errors --------------------------------------------------------------------------


def _format_loc(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc]
    return ".".join(parts)


def validation_error(exc: ValidationError, *, prefix: str = "", file: str | None = None,
                     lines: Any = None, model: type[BaseModel] | None = None) -> ConfigError:
    """Turn a pydantic error into one :class:`ConfigError` naming the key, line and fix."""
    messages = []
    first_line = first_col = None
    first_key = None
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        key = _format_loc(prefix, loc)
        line, col = lines(key) if lines else (None, None)
        if first_key is None:
            first_key, first_line, first_col = key, line, col
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            bad = str(loc[-1]) if loc else "?"
            allowed: list[str] = []
            sub = model
            if sub is not None:
                for part in loc[:-1]:
                    f = sub.model_fields.get(str(part)) if sub else None
                    ann = getattr(f, "annotation", None) if f else None
                    sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
                if sub is not None:
                    allowed = sorted(sub.model_fields)
            close = difflib.get_close_matches(bad, allowed, n=1)
            text = f"unknown key '{bad}'"
            if close:
                text += f" (did you mean '{close[0]}'?)"
            elif allowed:
                text += f" (allowed: {', '.join(allowed)})"
        elif kind == "missing":
            text = "required key is missing"
        else:
            text = err.get("msg", "invalid value")
            if "input" in err and not isinstance(err["input"], dict | list):
                text += f" (got {err['input']!r})"
        where = f"line {line}: " if line and file else ""
        messages.append(f"{where}{key}: {text}")
    if len(messages) == 1:
        msg = messages[0].split(": ", 1)[-1] if first_line and file else messages[0]
        body = msg.split(": ", 1)[-1] if msg.startswith(first_key or "\0") else msg
        return ConfigError(body, file=file, line=first_line, column=first_col, key=first_key,
                           hint="see `oaipipe schema` for every allowed key")
    return ConfigError(
        f"{len(messages)} problems:\n  " + "\n  ".join(messages),
        file=file, line=first_line, column=first_col,
        hint="see `oaipipe schema` for every allowed key",
    )


# --- loading ------------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: list[str] | None = None, *,
                environ: dict[str, str] | None = None) -> LoadedConfig:
    """Read, interpolate, override and validate the top level of a pipeline file."""
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise ConfigError(f"pipeline file not found: {path}", hint="give the path of a pipeline .yaml file")
    if path.is_dir():
        candidate = path / "pipeline.yaml"
        if candidate.exists():
            path, file = candidate, str(candidate)
        else:
            raise ConfigError(f"{path} is a folder without a pipeline.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read pipeline file: {exc}", file=file) from None
    data, positions = parse_yaml(text, file)
    if data is None:
        raise ConfigError("the pipeline file is empty", file=file,
                          hint="start from the shipped pipeline.yaml: it needs at least `source:`")
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of keys, not a {type(data).__name__}",
                          file=file, line=1, hint="start from the shipped pipeline.yaml")
    if overrides:  # before interpolation, so that `--set backend.api_key='${env:MY_KEY}'` works too
        data = apply_overrides(data, list(overrides))
    missing: list[str] = []
    data = interpolate_env(data, environ=environ, missing=missing)
    if missing:
        raise ConfigError("environment variables are not set: " + "; ".join(missing), file=file,
                          hint="export them, or use ${env:VAR:-default}")
    loaded = LoadedConfig(path=path.resolve(), config=None, data=data, positions=positions,  # type: ignore[arg-type]
                          overridden={o.split("=", 1)[0].strip() for o in overrides or ()})
    try:
        loaded.config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, file=file, lines=loaded.where, model=PipelineConfig) from None
    for key in ("backend", "source", "train"):
        block = data.get(key)
        if block is not None and not isinstance(block, dict):
            line, col = loaded.where(key)
            raise ConfigError(f"`{key}:` must be a mapping with a `type:`", file=file, line=line, column=col)
    return loaded

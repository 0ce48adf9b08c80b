"""pipeline.yaml: loading (with line numbers), ``${env:VAR}``, ``--set`` overrides, and validation.

The top level is validated here (``PipelineConfig``, ``extra="forbid"``). Each block that names a plugin
(``backend``, ``source``, each step, each sink, ``train``) is validated by that plugin's own ``Options``
model when the pipeline is built (:mod:`oaipipe.pipeline`), with errors pointing at the file and line.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, OaipipeError, Problem, register_secret
from .models_table import ModelEntry
from .textfile import read_text, refused_character

__all__ = [
    "MIN_SECRET_LENGTH",
    "EnvUse",
    "LoadedConfig",
    "PipelineConfig",
    "Problems",
    "RunSettings",
    "apply_overrides",
    "interpolate_env",
    "is_setting_value",
    "load_config",
    "load_config_data",
    "register_env_secrets",
    "validation_error",
]


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


class RunSettings(BaseModel):
    """The optional ``run:`` block: where run directories go and when to give up."""

    model_config = ConfigDict(extra="forbid")

    dir: str = Field("runs", description="Folder for run directories (relative to the pipeline file)")
    max_failures: int | None = Field(None, ge=0, description="Abort after this many failed records")
    max_cost: float | None = Field(None, gt=0, allow_inf_nan=False,
                                   description="Stop scheduling records past this many USD (finite, > 0)")
    cache: bool | dict[str, Any] = Field(
        True, description="Reuse identical calls from the response cache: true (the default SQLite store), false, "
                          "or a store block such as {type: sqlite, max_size: 1GB, max_age: 30d}",
    )
    cache_dir: str | None = Field(None, description="Defaults to .oaipipe/cache next to the pipeline file")
    offline_fallback: bool = Field(
        True, description="Use the local engine when the backend needs an OpenAI key and none is set"
    )
    workers: int | None = Field(None, ge=1, le=1024, description=(
        "Worker processes for CPU-bound steps (analyzers); default: the number of cores; 1 = in the driver"))
    executor: Literal["local", "ray"] = Field("local", description=(
        "Where process-safe CPU-bound steps run: local worker processes, or Ray actors (the `ray` extra)"))
    ray_address: str | None = Field(None, description="Ray cluster to join (e.g. ray://head:10001); else a local Ray")
    pool_min_records: int = Field(2000, ge=0, description=(
        "Start the worker processes only for an input of at least this many records (or of unknown size)"))
    shutdown_dates: Literal["auto", "always", "never"] = Field("auto", description=(
        "Ask the server (GET /models) at the start of a run for each model's shutdown_date: a warning within 60 "
        "days, a refusal from that day; auto: when the backend is OpenAI's API, always: any server, never"))
    prefix_scheduling: bool = Field(True, description=(
        "Send records whose prompts share a long prefix one after another (within a bounded window; output "
        "order unchanged), so that the server's prompt cache serves them"))

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_block(cls, value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return True if value is None else value
        if isinstance(value, str | int) and str(value).strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[str(value).strip().lower()]  # ${env:...} gives text
        if isinstance(value, dict):
            if "type" in value and not isinstance(value["type"], str):
                raise ValueError("`type` names a cache store (sqlite, files, or one a plugin registers)")
            return value
        raise ValueError("run.cache is true, false or a store block such as {type: sqlite, max_size: 1GB, "
                         "max_age: 30d}")

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, value: str | None) -> str | None:
        """Held to what a Ray address looks like when the file is read (``validate`` places it on its line);
        whether the cluster answers is checked when a run joins it."""
        from .ray_cluster import ray_address_problem  # no Ray import: the text alone

        problem = None if value is None else ray_address_problem(value)
        if problem is not None:
            raise ValueError(f"not a Ray address: {problem}; give auto, HOST:6379 (the GCS) or "
                             "ray://HOST:10001 (Ray Client), or leave it out for a local Ray")
        return value


class PipelineConfig(BaseModel):
    """The top level of pipeline.yaml. Plugin blocks are plain mappings here; their plugin validates them."""

    model_config = ConfigDict(extra="forbid")

    json_schema: str | None = Field(
        None, alias="$schema",
        description="URL or path of this file's JSON Schema, for editors (`oaipipe schema -o FILE`); not used by oaipipe",
    )
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
    models: dict[str, ModelEntry] | None = Field(
        None, description="What the pipeline knows of a model id (or id prefix), over the built-in model and "
        "price tables: {model: {input, cached_input, output (USD per 1M), context, api, shutdown, substitute, "
        "reasoning, fine_tunable}}"
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


def _construct_timestamp(loader: _LineLoader, node: yaml.ScalarNode) -> Any:
    """A scalar that looks like a date but is not one (``2026-13-45``, an offset of +99:00) stays the text
    it is, for the key's own check to refuse with its line, instead of a ValueError out of PyYAML."""
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except (ValueError, OverflowError):
        return loader.construct_scalar(node)


_LineLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)
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
    #: dotted key -> its ``--set KEY=VALUE`` as given (the last one of a key given twice)
    override_items: dict[str, str] = field(default_factory=dict)
    #: dotted key -> VAR for each whole value ``${env:VAR}`` whose variable is not set (the key became None)
    unset_env: dict[str, str] = field(default_factory=dict)
    #: what the user should know before anything runs (unset variables, secrets too short to mask)
    warnings: list[str] = field(default_factory=list)
    #: top-level keys whose value failed validation (reported, left out of ``config``; their blocks are not built)
    invalid: set[str] = field(default_factory=set)
    #: built from data given in code (``oaipipe.Pipeline({...})``): no file, messages name key paths only
    in_code: bool = False
    #: the file as messages name it: as the user gave it (``p.yaml``; a folder's ``FOLDER/pipeline.yaml``)
    shown_file: str = ""

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def origin(self, key: str) -> str | None:
        """``--set KEY=VALUE`` when the value at ``key`` came from one (given for ``key`` or a block above it,
        or, for a key the file does not have, for a key below it: ``--set sourc.path=x``); else None. A
        secret's value is not shown, a long one is cut short."""
        given = [k for k in self.override_items if key == k or key.startswith(k + ".")]
        given = given or [k for k in self.override_items if k.startswith(key + ".")]
        return f"--set {_shown_override(given[-1], self.override_items[given[-1]])}" if given else None

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


#: a key whose value is a secret (``api_key``, ``token``, ``password``...): never shown in a message
SECRET_KEY_NAME = re.compile(r"(?i)key|secret|passw|(^|_)token$|(^|_)auth$|authorization|credential")
#: a ``--set`` value longer than this is cut short where a message names the ``--set``
_SHOWN_VALUE = 60


def _shown_override(key: str, item: str) -> str:
    """``KEY=VALUE`` of a ``--set`` as a message shows it: a secret's value masked, a long value cut short."""
    value = item.split("=", 1)[1] if "=" in item else ""
    if value and SECRET_KEY_NAME.search(key.rsplit(".", 1)[-1]):
        value = "***"
    elif len(value) > _SHOWN_VALUE:
        value = value[:_SHOWN_VALUE - 3] + "..."
    return f"{key}={value}"


#: values that aliases (``*name``) may add to a pipeline file beyond those written in it: a few anchors
#: for shared settings add dozens; an alias bomb ("billion laughs") adds billions
MAX_ALIAS_EXPANSION = 100_000


def _check_aliases(root: yaml.Node) -> None:
    """Refuse an alias bomb or an alias loop before anything expands or walks the data (without recursion:
    a node met again is an alias, counted by the memoized size of what it expands to)."""

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return []

    sizes: dict[int, int] = {}  # id(node) -> how many values it expands to, aliases expanded
    open_nodes = {id(root)}
    stack: list[list[Any]] = [[root, children(root), 0, 1]]  # node, its children, next child, size so far
    while stack:
        frame = stack[-1]
        node, kids, index, size = frame
        if index < len(kids):
            frame[2] += 1
            child = kids[index]
            if id(child) in sizes:  # met before: an alias
                frame[3] += sizes[id(child)]
            elif id(child) in open_nodes:
                raise ConfigError("an alias refers to the block that contains it (a loop)",
                                  line=child.start_mark.line + 1, column=child.start_mark.column + 1,
                                  hint="an anchored block cannot include itself; write the values out")
            else:
                open_nodes.add(id(child))
                stack.append([child, children(child), 0, 1])
            continue
        stack.pop()
        open_nodes.discard(id(node))
        sizes[id(node)] = size
        if size - len(sizes) > MAX_ALIAS_EXPANSION:  # what aliases added, at least
            raise ConfigError(
                f"aliases (*name) make this value expand to {size:,} values, more than the "
                f"{MAX_ALIAS_EXPANSION:,} a pipeline file may add through aliases (an alias bomb?)",
                line=node.start_mark.line + 1, column=node.start_mark.column + 1,
                hint="write the values out, or nest fewer aliases inside anchored blocks")
        if stack:
            stack[-1][3] += size


def parse_yaml(text: str, file: str) -> tuple[Any, dict[str, tuple[int, int]]]:
    """Parse pipeline YAML, keeping the (line, column) of every key. Refused with a :class:`ConfigError`
    naming ``file`` and the line: malformed YAML, duplicate keys, nesting deeper than Python can follow,
    and aliases that expand past :data:`MAX_ALIAS_EXPANSION` values or into a loop (checked on the node
    graph, before anything is expanded)."""
    try:
        loader = _LineLoader(text)  # the reader refuses NUL and other control characters here
    except yaml.reader.ReaderError as exc:
        raise refused_character(exc, text, file, what="the pipeline file") from None
    loader._positions = {}  # type: ignore[attr-defined]
    try:
        node = loader.get_single_node()
        data = None
        if node is not None:
            _check_aliases(node)
            data = loader.construct_document(node)
    except RecursionError:
        line = getattr(loader, "line", None)
        raise ConfigError("the YAML is nested too deeply to read", file=file,
                          line=line + 1 if isinstance(line, int) else None,
                          hint="a pipeline file needs a few levels of nesting, not hundreds") from None
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

#: values from the environment shorter than this are not masked (masking "ab" would wreck every text)
MIN_SECRET_LENGTH = 4
# settings, not secrets: a number or a yes/no word read from the environment is never masked
_SETTING_RE = re.compile(r"(?i)[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?|true|false|yes|no|on|off|null|none|~")


@dataclass
class EnvUse:
    """One ``${env:VAR}`` that was replaced: where (dotted key), which variable, and what it gave."""

    key: str
    var: str
    value: str


def interpolate_env(value: Any, *, key: str = "", environ: Mapping[str, str] | None = None,
                    missing: list[str] | None = None, unset: dict[str, str] | None = None,
                    used: list[EnvUse] | None = None) -> Any:
    """Replace ``${env:VAR}`` (and ``${env:VAR:-default}``) in every string of ``value``.

    A variable that is not set becomes ``None`` when it is the whole value (so an unset
    ``OPENAI_API_KEY`` means "no key"; the key and variable are recorded in ``unset``), and is reported
    in ``missing`` when it is part of a longer string. Every value taken from the environment (not a
    default written in the file) is appended to ``used``: :func:`load_config` masks them all as secrets.
    """
    env = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {k: interpolate_env(v, key=f"{key}.{k}" if key else str(k), environ=env, missing=missing,
                                   unset=unset, used=used)
                for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, key=f"{key}.{i}", environ=env, missing=missing, unset=unset, used=used)
                for i, v in enumerate(value)]
    if not isinstance(value, str) or "${env:" not in value:
        return value
    whole = _ENV_RE.fullmatch(value.strip())
    if whole:
        name, default = whole.group(1), whole.group(2)
        got = env.get(name)
        if got:
            if used is not None:
                used.append(EnvUse(key, name, got))
            return got
        if default is None and unset is not None:
            unset[key] = name
        return default if default is not None else None

    def sub(m: re.Match[str]) -> str:
        got = env.get(m.group(1))
        if got:
            if used is not None:
                used.append(EnvUse(key, m.group(1), got))
            return got
        if m.group(2) is not None:
            return m.group(2)
        if missing is not None:
            missing.append(f"{key} needs ${{env:{m.group(1)}}}")
        return ""

    return _ENV_RE.sub(sub, value)


def is_setting_value(value: str) -> bool:
    """A number or a yes/no word: a value read from the environment that configures, not a secret."""
    return bool(_SETTING_RE.fullmatch(value.strip()))


def register_env_secrets(used: list[EnvUse]) -> list[EnvUse]:
    """Register every value taken from the environment as a secret (masked wherever oaipipe prints or
    writes); returns those too short to be masked (under :data:`MIN_SECRET_LENGTH` characters).

    Numbers and yes/no words (``8``, ``120.5``, ``true``) are settings and are left alone.
    """
    too_short = []
    for use in used:
        if is_setting_value(use.value):
            continue
        if len(use.value) < MIN_SECRET_LENGTH:
            too_short.append(use)
            continue
        register_secret(use.value)
    return too_short


def _env_warnings(loaded: LoadedConfig, file: str, too_short: list[EnvUse]) -> list[str]:
    """The warnings of :attr:`LoadedConfig.warnings`: where (file and line), what it means, and the fix."""
    out = []

    def where(key: str) -> str:
        line, _ = loaded.where(key)
        if line is not None:
            return f"{file}:{line}"
        origin = loaded.origin(key)
        return f"{file} ({origin})" if origin else file

    for key, var in loaded.unset_env.items():
        means = "no key is sent" if key.rsplit(".", 1)[-1] == "api_key" else "it counts as not given"
        drop = "drop that --set" if loaded.where(key)[0] is None and loaded.origin(key) else "remove the line"
        out.append(f"{where(key)}: {key} is ${{env:{var}}}, and {var} is not set, so {means}; "
                   f"export {var}=... or {drop}")
    for use in too_short:
        out.append(f"{where(use.key)}: {use.key}: the value of ${{env:{use.var}}} is shorter than "
                   f"{MIN_SECRET_LENGTH} characters, too short to be masked: it may appear in output and files")
    return out


# --- --set key.path=value -----------------------------------------------------------------------


def _coerce(text: str) -> Any:
    """``--set`` values are YAML scalars: 8 → int, true → bool, null → None, [a, b] → list."""
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, OverflowError):  # ValueError: a date that is not one (2026-13-45)
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


class Problems:
    """The errors of one pipeline file, collected so that all of them are reported in one pass.

    ``with problems.collect(key): ...`` records an :class:`OaipipeError` raised inside instead of letting
    it through (an error without a place of its own is placed at ``key``, or at ``key.option`` when it
    names the :attr:`~oaipipe.errors.OaipipeError.option` it is about); :meth:`raise_if_any` then
    raises the one error as it is, or several as one :class:`ConfigError` listing each problem.
    """

    def __init__(self, file: str | None = None,
                 where: Callable[[str], tuple[int | None, int | None]] | None = None,
                 origin: Callable[[str], str | None] | None = None) -> None:
        self.file = file
        self.where = where
        #: the ``--set`` that gave a key (:meth:`LoadedConfig.origin`): a problem at a key without a line names it
        self.origin = origin
        self.errors: list[OaipipeError] = []
        self.items: list[Problem] = []
        self._relisted = False  # an error of several problems gained an origin: list them again when raising

    def __bool__(self) -> bool:
        return bool(self.errors)

    def _origin_of(self, key: str | None, line: int | None) -> str | None:
        return self.origin(key) if self.origin is not None and key and line is None else None

    def add(self, exc: OaipipeError, key: str | None = None) -> None:
        self.errors.append(exc)
        if isinstance(exc, ConfigError):
            found = exc.problems
            placed = [p if p.origin else replace(p, origin=self._origin_of(p.key, p.line))
                      for p in found]
            if placed != found:  # a value given with --set: say so where a line would be
                if len(placed) == 1:
                    exc.set_origin(placed[0].origin or "")
                else:
                    self._relisted = True
            self.items.extend(placed)
            return
        if key and exc.option:  # the error is about one option of the block: place it on that option's line
            key = f"{key}.{exc.option}"
        line, column = self.where(key) if self.where is not None and key else (None, None)
        exc.set_problems([Problem.of(exc, file=self.file, line=line, column=column, key=key,
                                     origin=self._origin_of(key, line))])
        self.items.extend(exc.problems)

    @contextmanager
    def collect(self, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except OaipipeError as exc:
            self.add(exc, key)

    def raise_if_any(self) -> None:
        if not self.errors:
            return
        if len(self.errors) == 1 and not self._relisted:
            raise self.errors[0]
        unique: dict[tuple[Any, ...], Problem] = {}  # one problem met by several blocks (a broken plugin) is one
        for item in self.items:
            unique.setdefault((item.message, item.file, item.line, item.column, item.key, item.origin), item)
        if len(unique) == 1 and len(self.errors) > 1 and not self._relisted:
            raise self.errors[0]
        items = sorted(unique.values(), key=lambda p: (p.line is None, p.line or 0, p.column or 0))  # file order
        listed = "\n".join("  " + str(p).replace("\n", "\n  ") for p in items)
        raise ConfigError(f"{len(items)} problems:\n{listed}", file=self.file, problems=items)


def _format_loc(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc]
    return ".".join(parts)


def _allowed_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The keys the (nested) model at ``loc`` accepts, as they are written in the file (aliases)."""
    sub: Any = model
    for part in loc:
        if isinstance(sub, dict):  # a {name: Model} mapping (models:): the part is a name
            sub = sub["value"]
            continue
        f = sub.model_fields.get(str(part)) if sub else None
        sub = _model_in(getattr(f, "annotation", None) if f else None)
    if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
        return []
    return sorted(f.alias or name for name, f in sub.model_fields.items())


def _model_in(ann: Any) -> Any:
    """The model class an annotation holds (``M``, ``M | None``), or ``{"value": M}`` for ``dict[str, M]``."""
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) is dict and len(args) == 2:
        inner = _model_in(args[1])
        return {"value": inner} if inner is not None else None
    if len(args) == 1:
        return _model_in(args[0])
    return None


def _error_text(err: Any, loc: tuple[Any, ...], model: type[BaseModel] | None) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        bad = str(loc[-1]) if loc else "?"
        allowed = _allowed_keys(model, loc[:-1]) if model is not None else []
        close = difflib.get_close_matches(bad, allowed, n=1)
        text = f"unknown key '{bad}'"
        if close:
            return text + f" (did you mean '{close[0]}'?)"
        return text + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind == "missing":
        return "required key is missing"
    text = err.get("msg", "invalid value")
    if kind == "value_error":  # a validator's own message: without pydantic's "Value error, " before it
        text = text.removeprefix("Value error, ")
    if "input" in err and not isinstance(err["input"], dict | list):
        got = err["input"]  # a YAML date is shown as written, not as datetime.date(2020, 1, 1)
        text += f" (got {got.isoformat() if isinstance(got, _dt.date) else repr(got)})"
    return text


def validation_error(exc: ValidationError, *, prefix: str = "", file: str | None = None,
                     lines: Any = None, model: type[BaseModel] | None = None) -> ConfigError:
    """Turn a pydantic error into one :class:`ConfigError` naming the key, line and fix of each problem."""
    hint = "see `oaipipe schema` for every allowed key"
    problems: list[Problem] = []
    messages = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        key = _format_loc(prefix, loc)
        line, col = lines(key) if lines else (None, None)
        text = _error_text(err, loc, model)
        problems.append(Problem(text, file=file, line=line, column=col, key=key, hint=hint))
        where = f"line {line}: " if line and file else ""
        messages.append(f"{where}{key}: {text}")
    first = problems[0]
    if len(problems) == 1:
        return ConfigError(first.message, file=file, line=first.line, column=first.column, key=first.key,
                           hint=hint)
    return ConfigError(
        f"{len(messages)} problems:\n  " + "\n  ".join(messages),
        file=file, line=first.line, column=first.column, hint=hint, problems=problems,
    )


# --- loading ------------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: list[str] | None = None, *,
                environ: dict[str, str] | None = None, problems: Problems | None = None) -> LoadedConfig:
    """Read, interpolate, override and validate the top level of a pipeline file.

    With ``problems``, what is wrong with the top level's keys is recorded there instead of raised, and the
    config is built from the keys that are valid (:attr:`LoadedConfig.invalid` names the others); a file
    that cannot be read or parsed still raises at once.
    """
    given = str(path)
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise ConfigError(f"pipeline file not found: {path}", hint="give the path of a pipeline .yaml file")
    if path.is_dir():
        candidate = path / "pipeline.yaml"
        if not candidate.exists():
            raise _folder_without_pipeline(path, given)
        path, file = candidate, str(candidate)
    try:
        text = read_text(path, what="the pipeline file")
    except OSError as exc:
        raise ConfigError(f"cannot read pipeline file: {exc}", file=file) from None
    data, positions = parse_yaml(text, file)
    if data is None:
        raise ConfigError("the pipeline file is empty", file=file,
                          hint=f"it needs at least `source:`; {STARTER}")
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of keys, not a {type(data).__name__}",
                          file=file, line=1, hint=STARTER)
    return _load_data(data, positions, path, file, overrides, environ=environ, problems=problems)


#: how to start a pipeline file (there is no command that writes one)
STARTER = ("start from the example in oaipipe's README (\"Walk-through of pipeline.yaml\"); `oaipipe schema` "
           "lists every key")


def _folder_without_pipeline(folder: Path, given: str) -> ConfigError:
    """The error for a folder given as the pipeline that has no ``pipeline.yaml``: what was looked for, the
    pipeline files the folder holds (give one of them), or how to write one."""
    shown = given if given.endswith(("/", os.sep)) else given + "/"
    try:
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    except OSError:
        others = []
    if others:
        listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        hint = (f"give the pipeline file's path instead of the folder: {shown}{others[0]} (the folder holds "
                f"{listed}), or create {shown}pipeline.yaml")
    else:
        hint = f"give the pipeline file's path ({shown}NAME.yaml), or create {shown}pipeline.yaml: {STARTER}"
    return ConfigError(f"{shown} has no pipeline.yaml (a folder given as the pipeline is read as "
                       f"{shown}pipeline.yaml)", hint=hint)


def load_config_data(data: dict[str, Any], base_dir: str | Path | None = None, overrides: list[str] | None = None,
                     *, environ: dict[str, str] | None = None, problems: Problems | None = None) -> LoadedConfig:
    """Validate pipeline data given in code (``oaipipe.Pipeline({...})``) exactly as a file's: the same
    ``${env:VAR}``, overrides and checks. There are no lines: each problem names its key path
    (``steps.1.prompt``). Relative paths are resolved against ``base_dir`` (the current folder by default).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a pipeline is a mapping of blocks (source, steps, sinks...), not a {type(data).__name__}",
                          hint="pass a dict such as {'source': {...}, 'steps': [...]}")
    import copy

    base = Path(base_dir) if base_dir is not None else Path.cwd()
    name = str(data.get("name") or "pipeline")
    virtual = base / f"{''.join(c if c.isalnum() or c in '-_.' else '-' for c in name)}.pipeline (python)"
    loaded = _load_data(copy.deepcopy(data), {}, virtual, "", overrides, environ=environ, problems=problems)
    loaded.in_code = True
    return loaded


def _load_data(data: dict[str, Any], positions: dict[str, tuple[int, int]], path: Path, file: str,
               overrides: list[str] | None, *, environ: dict[str, str] | None,
               problems: Problems | None) -> LoadedConfig:
    """The shared part of :func:`load_config` and :func:`load_config_data`: interpolate, override, validate."""
    if overrides:  # before interpolation, so that `--set backend.api_key='${env:MY_KEY}'` works too
        data = apply_overrides(data, list(overrides))
    own = problems if problems is not None else Problems(file)
    missing: list[str] = []
    unset: dict[str, str] = {}
    used: list[EnvUse] = []
    data = interpolate_env(data, environ=environ, missing=missing, unset=unset, used=used)
    too_short = register_env_secrets(used)  # before any message can show them
    if missing:
        own.add(ConfigError("environment variables are not set: " + "; ".join(missing), file=file,
                            hint="export them, or use ${env:VAR:-default}"))
        if problems is None:
            own.raise_if_any()
    given = {_override_key(o): o for o in overrides or ()}
    loaded = LoadedConfig(path=path.resolve(), config=None, data=data, positions=positions,  # type: ignore[arg-type]
                          overridden=set(given), override_items=given, unset_env=unset, shown_file=file)
    loaded.warnings = _env_warnings(loaded, file, too_short)
    own.where, own.origin = loaded.where, loaded.origin
    loaded.config = _validated(loaded, file, own)
    for key in ("backend", "source", "train"):
        block = data.get(key)
        if block is not None and not isinstance(block, dict) and key not in loaded.invalid:
            line, col = loaded.where(key)
            loaded.invalid.add(key)
            own.add(ConfigError(f"`{key}:` must be a mapping with a `type:`", file=file, line=line, column=col))
    if problems is None:
        own.raise_if_any()
    return loaded


def _override_key(item: str) -> str:
    """The dotted key of a ``--set KEY=VALUE`` as :func:`apply_overrides` reads it (``steps..1`` is ``steps.1``)."""
    return ".".join(p for p in item.split("=", 1)[0].strip().split(".") if p)


def _validated(loaded: LoadedConfig, file: str, problems: Problems) -> PipelineConfig:
    """The top level, validated; each invalid key is recorded in ``problems`` and left out."""
    try:
        return PipelineConfig.model_validate(loaded.data)
    except ValidationError as exc:
        error = validation_error(exc, file=file, lines=loaded.where, model=PipelineConfig)
        problems.add(error)
        loaded.invalid.update(str(e["loc"][0]) for e in exc.errors() if e.get("loc"))
    kept = {k: v for k, v in loaded.data.items() if k not in loaded.invalid}
    kept.setdefault("source", {})  # a missing `source:` is reported above; the placeholder is never built
    try:
        return PipelineConfig.model_validate(kept)
    except ValidationError:  # pragma: no cover - every invalid key was left out
        problems.raise_if_any()
        raise

"""Plugin loading and the registry of components: a small typed front over ``pm.hook``.

Built-in plugins (``DEFAULT_PLUGINS``) are ordinary modules loaded exactly like third-party ones.
Third-party plugins come from the ``oaipipe`` entry-point group and from a pipeline's ``plugins:`` list.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy
from pydantic import ValidationError

from . import hookspecs
from .base import Analyzer, Backend, Component, Context, Sink, Source, Step, Trainer
from .cache import CacheStore
from .errors import ConfigError, PluginError, PluginLoadError, UnknownPluginError
from .lazy import missing_libraries

if TYPE_CHECKING:
    import click

    from .types import RecordResult, RunInfo

__all__ = ["DEFAULT_PLUGINS", "KINDS", "PluginHost", "Registration", "get_plugin_manager"]

#: built-in plugin modules, registered in this order before any third-party plugin
DEFAULT_PLUGINS: tuple[str, ...] = (
    "oaipipe.builtin.source_csv",
    "oaipipe.builtin.source_jsonl",
    "oaipipe.builtin.source_images",
    "oaipipe.builtin.source_excel",
    "oaipipe.builtin.source_records",
    "oaipipe.builtin.format_parquet",
    "oaipipe.builtin.format_hf",
    "oaipipe.builtin.format_sqlite",
    "oaipipe.builtin.analyzer_keyword",
    "oaipipe.builtin.analyzer_vader",
    "oaipipe.builtin.analyzer_llm",
    "oaipipe.builtin.backend_local",
    "oaipipe.builtin.backend_openai",
    "oaipipe.builtin.backend_requests",
    "oaipipe.builtin.backend_batch",
    "oaipipe.builtin.step_sentiment",
    "oaipipe.builtin.step_ask",
    "oaipipe.builtin.step_describe_image",
    "oaipipe.builtin.sink_dialogue",
    "oaipipe.builtin.sink_records",
    "oaipipe.builtin.trainer_local",
    "oaipipe.builtin.trainer_openai",
    "oaipipe.builtin.cache_stores",
    "oaipipe.builtin.commands_core",
    "oaipipe.builtin.commands_chat",
    "oaipipe.builtin.commands_serve",
    "oaipipe.builtin.commands_assistants",
    "oaipipe.builtin.commands_training",
    "oaipipe.builtin.run_store",
    "oaipipe.builtin.commands_results",
    "oaipipe.builtin.commands_cache",
)

ENTRY_POINT_GROUP = "oaipipe"

#: kind -> (hook name, base class)
KINDS: dict[str, tuple[str, type[Component]]] = {
    "source": ("register_sources", Source),
    "analyzer": ("register_analyzers", Analyzer),
    "backend": ("register_backends", Backend),
    "step": ("register_steps", Step),
    "sink": ("register_sinks", Sink),
    "trainer": ("register_trainers", Trainer),
    "cache_store": ("register_cache_stores", CacheStore),
}


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    cls: type[Component]
    plugin: str


@dataclass
class PluginInfo:
    name: str
    origin: str  # "builtin", "entry point <dist>", "pipeline file <path>", "module"
    registers: list[str] = field(default_factory=list)


def get_plugin_manager(extra: Iterable[str | ModuleType] = (), *, base_dir: Path | None = None,
                       disabled: Iterable[str] = (), entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, entry points and ``extra`` plugins loaded and checked."""
    return PluginHost(extra, base_dir=base_dir, disabled=disabled, entry_points=entry_points).pm


def _missing_library(module: str, exc: ImportError) -> str:
    """``needs <module> (<error>): pip install '<requirement>'`` with oaipipe's own requirement for it."""
    import re

    want = re.sub(r"[-_.]+", "-", module).lower()
    requirement = module
    with _suppress_metadata_errors():
        for req in metadata.requires("oaipipe") or []:
            name = re.split(r"[\s\[;<>=!~]", req, maxsplit=1)[0]
            if re.sub(r"[-_.]+", "-", name).lower() == want and "extra ==" not in req:
                requirement = req.split(";")[0].strip()
    return f"needs {module}, which cannot be imported ({exc}): pip install '{requirement}'"


def _suppress_metadata_errors() -> Any:
    import contextlib

    return contextlib.suppress(metadata.PackageNotFoundError)


class PluginHost:
    """Loads plugins, collects what they register, and builds components from option blocks."""

    def __init__(
        self,
        extra: Iterable[str | ModuleType] = (),
        *,
        base_dir: Path | None = None,
        disabled: Iterable[str] = (),
        entry_points: bool = True,
        pipeline_file: str | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.base_dir = base_dir or Path.cwd()
        self.disabled = set(disabled)
        self.info: dict[str, PluginInfo] = {}
        self._pipeline_file = pipeline_file
        #: built-in plugins left out because a library they import is missing: short name -> reason and fix
        self.unavailable: dict[str, str] = {}
        for name in DEFAULT_PLUGINS:
            short = name.rsplit(".", 1)[-1]
            try:
                module = importlib.import_module(name)
                lazy = missing_libraries(module)  # what it imports on first use must be there too
                if lazy:
                    raise ModuleNotFoundError(f"No module named '{lazy[0]}'", name=lazy[0])
            except ImportError as exc:  # a missing or too old third-party library: the others still work
                missing = (exc.name or "").split(".")[0]
                if not missing or missing == "oaipipe":
                    raise
                self.unavailable[short] = _missing_library(missing, exc)
                self.info[short] = PluginInfo(short, f"builtin (not loaded: {self.unavailable[short]})")
                continue
            self._register_module(module, short, "builtin")
        if entry_points:
            self._load_entry_points()
        for item in extra:
            self.load(item)
        self.check_pending()
        self._registry: dict[str, dict[str, Registration]] | None = None
        self._analyzers: dict[str, Analyzer] = {}

    # --- loading --------------------------------------------------------------------------------

    def _register_module(self, module: ModuleType | Any, name: str, origin: str) -> None:
        if name in self.disabled:
            self.pm.set_blocked(name)
            self.info[name] = PluginInfo(name, origin + " (disabled)")
            return
        if self.pm.is_registered(module):
            return  # already loaded (a built-in listed again under `plugins:`, say)
        taken = self.pm.get_plugin(name)
        if taken is not None:
            if origin.startswith("file") and self.info.get(name, PluginInfo(name, "")).origin != origin:
                other = self.info[name].origin if name in self.info else "another plugin"
                raise PluginLoadError(
                    f"plugin file {origin[5:]} is named '{name}', like a plugin already loaded ({other}); "
                    f"it would be ignored",
                    hint=f"rename the file (e.g. my_{name}.py) and its entry under `plugins:`",
                )
            return
        try:
            self.pm.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(
                f"plugin '{name}' ({origin}) does not fit the hook specs: {exc}",
                hint="compare the hook's arguments with oaipipe/hookspecs.py (e.g. `def register_analyzers(register):`)",
            ) from None
        self.info[name] = PluginInfo(name, origin)
        self._registry = None

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - report any import failure the same way
                raise PluginLoadError(
                    f"plugin '{ep.name}' (entry point {ep.value}) failed to import: {exc}",
                    hint=f"fix or uninstall the package that provides it, or disable it with --disable-plugin {ep.name}",
                ) from exc
            dist = getattr(ep, "dist", None)
            origin = f"entry point ({dist.name} {dist.version})" if dist else "entry point"
            self._register_module(module, ep.name, origin)

    def load(self, item: str | ModuleType) -> None:
        """Load one plugin: a module object, a ``.py`` path (relative to ``base_dir``) or a dotted name."""
        if isinstance(item, ModuleType):
            self._register_module(item, item.__name__, "module")
            return
        where = f" (listed in {self._pipeline_file})" if self._pipeline_file else ""
        if item.endswith(".py") or "/" in item or "\\" in item:
            path = Path(item).expanduser()
            if not path.is_absolute():
                path = self.base_dir / path
            if not path.is_file():
                raise PluginLoadError(
                    f"plugin file not found: {path}{where}",
                    hint="paths in `plugins:` are relative to the pipeline file; check the spelling",
                )
            mod_name = f"oaipipe_user_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # noqa: BLE001
                sys.modules.pop(mod_name, None)
                raise PluginLoadError(
                    f"plugin file {path}{where} failed to import: {type(exc).__name__}: {exc}",
                    hint="run `python " + str(path) + "` to see the full traceback",
                ) from exc
            self._register_module(module, path.stem, f"file {path}")
            return
        try:
            module = importlib.import_module(item)
        except ImportError as exc:
            raise PluginLoadError(
                f"plugin module '{item}'{where} cannot be imported: {exc}",
                hint="give a .py path relative to the pipeline file, or install the package that provides it",
            ) from exc
        except Exception as exc:  # noqa: BLE001
            raise PluginLoadError(f"plugin module '{item}'{where} failed to import: {type(exc).__name__}: {exc}") from exc
        self._register_module(module, item, "module")

    def check_disabled(self) -> None:
        """A name in ``disable_plugins`` / ``--disable-plugin`` that matches no plugin is a mistake: say so."""
        unknown = sorted(self.disabled - set(self.info))
        if unknown:
            close = [difflib.get_close_matches(n, list(self.info), n=1) for n in unknown]
            hint = "; ".join(f"did you mean '{c[0]}'?" for c in close if c)
            raise ConfigError(
                f"cannot disable {', '.join(repr(n) for n in unknown)}: no plugin has that name",
                hint=(hint + " " if hint else "") + "`oaipipe plugins` lists the plugin names",
            )

    def check_pending(self) -> None:
        """Fail loudly on a hook implementation that matches no spec (a typo in a hook name)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            plugin = self.pm.get_name(exc.plugin) or "?"
            known = [n for n in dir(hookspecs) if n.startswith(("register_", "oaipipe_"))]
            bad = next((name for name in dir(exc.plugin) if name not in known
                        and getattr(getattr(exc.plugin, name, None), "oaipipe_impl", None) is not None), "")
            close = difflib.get_close_matches(bad, known, n=1)
            origin = self.info[plugin].origin if plugin in self.info else "plugin"
            raise PluginLoadError(
                f"plugin '{plugin}' ({origin}) implements an unknown hook '{bad}'",
                hint=(f"did you mean '{close[0]}'? " if close else "") + f"the hooks are: {', '.join(sorted(known))}",
            ) from None

    # --- the registry ---------------------------------------------------------------------------

    @property
    def registry(self) -> dict[str, dict[str, Registration]]:
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _collect(self) -> dict[str, dict[str, Registration]]:
        registry: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        for info in self.info.values():
            info.registers.clear()
        for kind, (hook_name, base) in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            # call each implementation separately so we know which plugin registered what
            for impl in reversed(hook.get_hookimpls()):
                plugin_name = self.pm.get_name(impl.plugin) or "?"

                def register(name: str, cls: Any, _kind: str = kind, _base: type[Component] = base,
                             _plugin: str = plugin_name) -> None:
                    if not (isinstance(cls, type) and issubclass(cls, _base)):
                        raise PluginLoadError(
                            f"plugin '{_plugin}' registered {_kind} '{name}' as {cls!r}, "
                            f"which is not a subclass of oaipipe.{_base.__name__}"
                        )
                    existing = registry[_kind].get(name)
                    if existing is not None and existing.plugin != _plugin:
                        raise PluginLoadError(
                            f"{_kind} '{name}' is registered by both '{existing.plugin}' and '{_plugin}'",
                            hint=f"disable one of them with --disable-plugin {_plugin}",
                        )
                    if not cls.__dict__.get("name"):
                        cls.name = name
                    registry[_kind][name] = Registration(_kind, name, cls, _plugin)
                    if _plugin in self.info:
                        self.info[_plugin].registers.append(f"{_kind}:{name}")

                if "register" not in impl.argnames:  # pluggy passes a hook only the arguments it names
                    raise PluginLoadError(
                        f"plugin '{plugin_name}': {hook_name}() takes no `register` argument, so it cannot "
                        f"register anything",
                        hint=f"write it as `def {hook_name}(register): register(\"NAME\", YourClass)` "
                             "(docs/plugins.md)")
                returned = impl.function(register=register)
                if returned is not None:  # e.g. `return {"name": Class}`: nothing would be registered
                    raise PluginLoadError(
                        f"plugin '{plugin_name}': {hook_name}() returned {type(returned).__name__} instead of "
                        "calling register(); a returned value registers nothing",
                        hint=f"call register(\"NAME\", YourClass) for each {kind} inside {hook_name}(register)")
        return registry

    def names(self, kind: str) -> list[str]:
        return sorted(self.registry[kind])

    def get(self, kind: str, name: str, *, key: str | None = None, file: str | None = None,
            line: int | None = None) -> Registration:
        """The registration of ``name``, or an :class:`UnknownPluginError` listing the known names."""
        found = self.registry[kind].get(name)
        if found is None and f"{kind}_{name.replace('-', '_')}" in self.unavailable:
            plugin = f"{kind}_{name.replace('-', '_')}"
            raise ConfigError(f"{kind} '{name}' is not available: built-in plugin {plugin} "
                              f"{self.unavailable[plugin]}", key=key, file=file, line=line,
                              hint="install the missing library (the command above), or use another " + kind)
        if found is None:
            known = self.names(kind)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            hint += f"known {kind}s: {', '.join(known) or '(none)'}"
            if kind != "step":
                hint += "; a plugin of your own is listed under `plugins:` in the pipeline file"
            raise UnknownPluginError(f"unknown {kind} '{name}'", key=key, file=file, line=line, hint=hint)
        return found

    def build(self, kind: str, block: dict[str, Any], context: Context, *, key: str = "",
              file: str | None = None, lines: Any = None, type_key: str = "type") -> Component:
        """Validate ``block`` against the component's ``Options`` and build it.

        ``lines`` is an optional callable ``(dotted_key) -> (line, column)`` for error locations.
        """
        from .config import validation_error  # local: config imports plugins

        name = block.get(type_key)
        line = lines(key)[0] if lines else None
        if not name or not isinstance(name, str):
            raise ConfigError(f"missing `{type_key}:`", key=key, file=file, line=line,
                              hint=f"known {kind}s: {', '.join(self.names(kind))}")
        reg = self.get(kind, name, key=f"{key}.{type_key}" if key else type_key, file=file,
                       line=lines(f"{key}.{type_key}")[0] if lines else None)
        data = dict(block)
        if "type" not in reg.cls.Options.model_fields:
            data.pop("type", None)
        try:
            options = reg.cls.Options.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc, prefix=key, file=file, lines=lines,
                                   model=reg.cls.Options) from None
        obj = reg.cls(options, context)
        return obj

    def analyzer(self, spec: str | dict[str, Any], context: Context | None = None) -> Analyzer:
        """A shared analyzer instance for a name (or ``{type: name, ...options}``)."""
        if isinstance(spec, str):
            key = spec
            block: dict[str, Any] = {"type": spec}
        else:
            block = dict(spec)
            key = repr(sorted(block.items()))
        if key not in self._analyzers:
            obj = self.build("analyzer", block, context or Context(host=self), key="analyzer")
            assert isinstance(obj, Analyzer)
            self._analyzers[key] = obj
        return self._analyzers[key]

    # --- lifecycle ------------------------------------------------------------------------------

    # The typed front over ``pm.hook`` (tox 4's plugin manager is the model): the core calls these
    # methods, never a hook by a name string, so a renamed or mistyped hook is a type error, not a no-op.

    def add_commands(self, cli: click.Group) -> None:
        """``register_commands``: every plugin adds its commands to ``cli``."""
        self.pm.hook.register_commands(cli=cli)

    def run_start(self, run: RunInfo) -> None:
        """``oaipipe_run_start``: a run begins (its outputs are open)."""
        self._guarded("oaipipe_run_start", lambda: self.pm.hook.oaipipe_run_start(run=run))

    def record_done(self, run: RunInfo, result: RecordResult) -> None:
        """``oaipipe_record_done``: one record is finished (done or failed) and journaled."""
        self._guarded("oaipipe_record_done", lambda: self.pm.hook.oaipipe_record_done(run=run, result=result))

    def run_finish(self, run: RunInfo, summary: dict[str, Any]) -> None:
        """``oaipipe_run_finish``: the run's summary is written."""
        self._guarded("oaipipe_run_finish", lambda: self.pm.hook.oaipipe_run_finish(run=run, summary=summary))

    def _guarded(self, hook_name: str, call: Callable[[], object]) -> None:
        """Call a lifecycle hook; an exception in a plugin becomes a :class:`PluginError` naming it."""
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - any plugin bug, reported with its origin
            raise PluginError(
                f"plugin '{self._plugin_of(exc, hook_name)}' failed in its {hook_name} hook: "
                f"{type(exc).__name__}: {exc}",
                hint="fix the plugin, or switch it off with --disable-plugin NAME",
            ) from exc

    def _plugin_of(self, exc: BaseException, hook_name: str) -> str:
        tb = exc.__traceback__
        files: dict[str, str] = {}
        for plugin_name, plugin in self.pm.list_name_plugin():
            path = getattr(plugin, "__file__", None)
            if path:
                files[str(Path(path).resolve())] = plugin_name
        found = "?"
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_name == hook_name:
                found = files.get(str(Path(code.co_filename).resolve()), code.co_filename)
            tb = tb.tb_next
        return found

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def describe(self) -> list[dict[str, Any]]:
        """What ``oaipipe plugins`` prints: each plugin, its origin and what it registers."""
        self.registry  # noqa: B018 - fill PluginInfo.registers
        import click

        for impl in self.pm.hook.register_commands.get_hookimpls():
            group = click.Group()
            try:
                impl.function(cli=group)
            except Exception:  # noqa: BLE001 - listing must not fail on a broken command plugin
                continue
            name = self.pm.get_name(impl.plugin) or "?"
            if name in self.info:
                regs = self.info[name].registers
                regs.extend(f"command:{c}" for c in sorted(group.commands) if f"command:{c}" not in regs)
        return [
            {"name": info.name, "origin": info.origin, "registers": list(info.registers)}
            for info in self.info.values()
        ]

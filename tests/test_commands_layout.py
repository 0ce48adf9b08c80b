"""Commands in their own room (issue 10, item 3): one module-level function per command in
``oaipipe.commands``, added by the built-in plugins; exit codes are an ``ExitCode``; one-off calls build
their backend with one library function that knows nothing of click."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import oaipipe.cli
from oaipipe.cli import cli, main
from oaipipe.errors import ConfigError, ExitCode, OaipipeError
from oaipipe.plugins import DEFAULT_PLUGINS

PACKAGE = Path(oaipipe.cli.__file__).resolve().parent
REPO = PACKAGE.parent


def _commands() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    found: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: str) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None
            found[f"{prefix}{name}"] = command
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")

    walk(cli, "")
    return found


def test_every_command_is_a_module_level_function_in_oaipipe_commands() -> None:
    for name, command in _commands().items():
        callback = command.callback
        assert callback is not None, name
        assert callback.__module__.startswith("oaipipe.commands."), (name, callback.__module__)
        assert "<locals>" not in callback.__qualname__, (name, callback.__qualname__)
        module = inspect.getmodule(callback)
        assert getattr(module, callback.__name__) is command, name  # the module-level name is the command


def test_the_builtin_command_plugins_only_add_commands() -> None:
    modules = sorted(p.stem for p in (PACKAGE / "builtin").glob("commands_*.py"))
    assert modules and all(f"oaipipe.builtin.{m}" in DEFAULT_PLUGINS for m in modules)
    for name in modules:
        tree = ast.parse((PACKAGE / "builtin" / f"{name}.py").read_text(encoding="utf-8"))
        functions = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        assert functions == ["register_commands"], (name, functions)
        register = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
        assert len(register.body) <= 2, name  # a loop over cli.add_command, or one call


def test_library_modules_do_not_import_click() -> None:
    """Only the command layer talks to click (plugins.py's `oaipipe plugins` listing is the one exception)."""
    command_layer = {"cli.py", "plugins.py"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "commands" or rel.name in command_layer or rel.name.startswith("commands_"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "click" or n.startswith("click.") for n in names) and id(node) not in guarded:
                offenders.append(str(rel))
    assert offenders == []


def test_error_classes_and_main_speak_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def subclasses(cls: type) -> list[type]:
        return [cls] + [s for sub in cls.__subclasses__() for s in subclasses(sub)]

    for cls in subclasses(OaipipeError):
        assert isinstance(cls.exit_code, ExitCode), cls
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 130]
    code = main(["validate", str(tmp_path / "missing.yaml")])
    assert type(code) is ExitCode and code is ExitCode.USAGE_ERROR
    code = main(["schema", "--json"])
    assert type(code) is ExitCode and code is ExitCode.OK
    assert not hasattr(oaipipe.cli, "set_exit_code")


def test_a_returned_exit_code_is_the_exit_code_in_clicks_own_mode_too() -> None:
    """The group maps what a command returns onto the exit: CliRunner (standalone mode) sees it as well."""
    bad = str(REPO / "tests" / "data" / "training" / "missing_content.jsonl")
    result = CliRunner().invoke(cli, ["dataset", "validate", bad])
    assert result.exit_code == ExitCode.DATASET_ERROR, result.output
    good = str(REPO / "tests" / "data" / "training" / "valid_sft.jsonl")
    assert CliRunner().invoke(cli, ["dataset", "validate", good]).exit_code == 0


# --- the one-off backend: one library function ------------------------------------------------------


def test_load_backend_needs_no_click_context() -> None:
    from oaipipe.oneoff import call, load_backend
    from oaipipe.testing import running_server

    assert click.get_current_context(silent=True) is None
    with running_server(api_key="sk-served-key-12345") as srv:
        oneoff = load_backend(backend="requests", base_url=srv.base_url, api_key="sk-served-key-12345")
        models = call(oneoff.backend, oneoff.backend.list_models)
    assert oneoff.backend.name == "requests" and oneoff.note is None
    assert "gpt-4o-mini" in [m.id for m in models]


def test_load_backend_reads_a_pipeline_exactly_as_load_pipeline(tmp_path: Path) -> None:
    """Plugins of the file are loaded by the same code: an error names the file and line like validate's."""
    from oaipipe.oneoff import load_backend
    from oaipipe.pipeline import load_pipeline

    (tmp_path / "in.jsonl").write_text('{"text": "hi"}\n', encoding="utf-8")
    path = tmp_path / "p.yaml"
    path.write_text("source: {type: jsonl, path: in.jsonl}\nplugins: [nowhere.py]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as from_oneoff:
        load_backend(path)
    with pytest.raises(ConfigError) as from_pipeline:
        load_pipeline(path)
    assert str(from_oneoff.value) == str(from_pipeline.value)
    assert f"{path}:2" in str(from_oneoff.value) and "plugins.0" in str(from_oneoff.value)

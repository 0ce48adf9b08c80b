"""The public plugin kit (issue 10 item 4): oaipipe.kit's names, docstrings, the docs' example run for real,
and the base classes generic over their options."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLUGINS_DOC = REPO / "docs" / "plugins.md"


def _kit_example() -> str:
    section = PLUGINS_DOC.read_text(encoding="utf-8").split("\n### The plugin kit\n")[1].split("\n### ")[0]
    return re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)[0]


def test_every_name_of_the_kit_resolves_and_is_documented() -> None:
    import oaipipe.kit as kit

    assert len(kit.__all__) == len(set(kit.__all__))
    undocumented = []
    for name in kit.__all__:
        value = getattr(kit, name)  # lazily imported from its module
        if (callable(value) and not isinstance(value, typing.TypeVar)
                and not (getattr(value, "__doc__", None) or "").strip()):
            undocumented.append(name)
    assert undocumented == [], f"kit names without a docstring: {undocumented}"
    assert "oaipipe.kit" in (PLUGINS_DOC.read_text(encoding="utf-8"))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kit.nope  # noqa: B018


def test_the_builtins_use_the_kit_classes_the_docs_name() -> None:
    from oaipipe.builtin.sink_records import JsonlRecordsSink
    from oaipipe.builtin.source_csv import CsvSource
    from oaipipe.builtin.step_ask import AskStep
    from oaipipe.kit import ChatStepMixin, FileSource, JsonlAppendingSink

    assert issubclass(CsvSource, FileSource)
    assert issubclass(JsonlRecordsSink, JsonlAppendingSink)
    assert issubclass(AskStep, ChatStepMixin)


def test_the_kit_example_in_the_docs_runs(oaipipe_project) -> None:  # type: ignore[no-untyped-def]
    oaipipe_project.write(
        plugins=["kit_example.py"],
        files={"kit_example.py": _kit_example(), "data.tsv": "id\ttext\nr1\tgood mug\nr2\tbad lid\n"},
        source={"type": "tsv", "path": "data.tsv"},
        backend={"type": "local"},
        steps=[{"type": "ask", "prompt": "Reply to: {text}", "output": "reply"}],
        sinks=[{"type": "replies", "path": "out/replies.jsonl"}],
    )
    result = oaipipe_project.run()
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (oaipipe_project.path / "out/replies.jsonl").read_text().splitlines()]
    assert sorted(line["_id"] for line in lines) == ["r1", "r2"]
    assert all(line["reply"] for line in lines)
    again = oaipipe_project.run("--fresh")  # overwrite mode: each record once
    assert again.exit_code == 0, again.output
    assert len((oaipipe_project.path / "out/replies.jsonl").read_text().splitlines()) == 2


def test_the_base_classes_are_generic_over_their_options() -> None:
    from oaipipe import PluginOptions, Source
    from oaipipe.base import OptionsT

    class Opts(PluginOptions):
        size: int = 3

    class Sized(Source[Opts]):
        Options = Opts

    assert typing.get_args(Sized.__orig_bases__[0]) == (Opts,)  # type: ignore[attr-defined]
    assert Source.__parameters__ == (OptionsT,)  # type: ignore[attr-defined]
    assert Sized().options.size == 3  # built from Options when none is given
    hints = typing.get_type_hints(Source.__init__)
    assert OptionsT in typing.get_args(hints["options"])


def test_the_core_calls_hooks_through_the_typed_methods_of_the_plugin_host() -> None:
    """Only oaipipe/plugins.py touches ``pm.hook``; the rest of the core calls ``host.run_start(info)`` and
    friends (tox 4's typed front over pluggy), never a hook by a name string."""
    import ast

    offenders = []
    for path in sorted((REPO / "oaipipe").rglob("*.py")):
        if path.name == "plugins.py" and path.parent.name == "oaipipe":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("hook", "call_hook"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} .{node.attr}")
    assert offenders == [], offenders

    from oaipipe import hookspecs
    from oaipipe.plugins import PluginHost

    typed = {"oaipipe_run_start": "run_start", "oaipipe_record_done": "record_done",
             "oaipipe_run_finish": "run_finish", "register_commands": "add_commands"}
    for hook, method in typed.items():
        assert hasattr(hookspecs, hook) and callable(getattr(PluginHost, method)), method


def test_a_failing_lifecycle_hook_is_reported_with_its_plugin(tmp_path: Path) -> None:
    from oaipipe.errors import PluginError
    from oaipipe.plugins import PluginHost
    from oaipipe.types import RunInfo

    (tmp_path / "broken.py").write_text("from oaipipe import hookimpl\n\n@hookimpl\ndef oaipipe_run_start(run):\n"
                                        "    raise ValueError('boom')\n", encoding="utf-8")
    host = PluginHost(["broken.py"], base_dir=tmp_path, entry_points=False)
    with pytest.raises(PluginError, match=r"plugin 'broken' failed in its oaipipe_run_start hook: ValueError: boom"):
        host.run_start(RunInfo(pipeline_name="p", run_id="r", run_dir=str(tmp_path), backend="local", model="m"))

"""Meta-tests: the plugin contract is documented, exercised and wired (after datasette's tests/test_docs.py).

* every hook in ``oaipipe/hookspecs.py`` has a section in docs/plugins.md with its exact signature;
* every hook is called, through the plugin manager, on a real plugin installed the way a third-party
  package is (an entry point), and what that plugin registers is seen to work;
* every module in ``oaipipe/builtin/`` is registered by the plugin host;
* the engine and the server are plain libraries: they never import the plugin machinery;
* the test kit (``oaipipe.testing``) works for a plugin author, as the docs show it.

``python tests/test_meta.py`` prints the hook reference's headings and signatures as generated from the
hook specs, to paste into docs/plugins.md when a hook is added or changed.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "oaipipe"
HOOKSPECS = PACKAGE / "hookspecs.py"
PLUGINS_DOC = REPO / "docs" / "plugins.md"


# --- the hook specs, read from the source -------------------------------------------------------


def hook_specs() -> dict[str, ast.FunctionDef]:
    """Every function in hookspecs.py decorated with ``@hookspec``, by name, in file order."""
    tree = ast.parse(HOOKSPECS.read_text(encoding="utf-8"))
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)
            and any(isinstance(d, ast.Name) and d.id == "hookspec" for d in node.decorator_list)}


def signature(node: ast.FunctionDef) -> str:
    """The line docs/plugins.md shows for a hook: ``def name(arg: Type, ...) -> Return``."""
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"def {node.name}({ast.unparse(node.args)}){returns}"


def heading(node: ast.FunctionDef) -> str:
    return f"### `{node.name}({', '.join(a.arg for a in node.args.args)})`"


def generated_reference() -> str:
    return "\n\n".join(f"{heading(node)}\n\n```python\n{signature(node)}\n```" for node in hook_specs().values())


HOOKS = list(hook_specs())


def doc_sections() -> dict[str, str]:
    """The sections of docs/plugins.md's "Hook reference": hook name -> text (heading included)."""
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    match = re.search(r"^## Hook reference\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "docs/plugins.md has no '## Hook reference' section"
    parts = re.split(r"(?=^### )", match.group(1), flags=re.M)
    sections: dict[str, str] = {}
    for part in parts:
        found = re.match(r"### `(\w+)\(", part)
        if found:
            sections[found.group(1)] = part
    return sections


def test_hook_specs_are_what_pluggy_loads() -> None:
    import pluggy

    from oaipipe import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    assert sorted(HOOKS) == sorted(name for name in vars(pm.hook) if not name.startswith("_"))
    assert len(HOOKS) >= 10


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook: str) -> None:
    node = hook_specs()[hook]
    sections = doc_sections()
    expected = f"{heading(node)}\n\n```python\n{signature(node)}\n```"
    assert hook in sections, f"docs/plugins.md's Hook reference has no section for {hook}; add:\n\n{expected}\n"
    section = sections[hook]
    assert section.startswith(expected), (
        f"the section of {hook} in docs/plugins.md does not start with the signature in oaipipe/hookspecs.py; "
        f"it should read:\n\n{expected}\n")
    prose = section[len(expected):]
    assert len(prose.split()) >= 40, f"the section of {hook} says too little for a plugin author"


def test_the_hook_reference_documents_no_hook_that_does_not_exist() -> None:
    assert list(doc_sections()) == HOOKS  # the same hooks, in the order of hookspecs.py


def _doc_plugin_examples() -> list[str]:
    """The plugin modules shown in docs/plugins.md (the testing section's are tests, run below)."""
    text = PLUGINS_DOC.read_text(encoding="utf-8").split("\n## Testing your plugin\n")[0]
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    return [b for b in blocks if "@hookimpl" in b]


@pytest.mark.parametrize("index", range(len(_doc_plugin_examples())))
def test_plugin_examples_in_the_docs_load_and_register(index: int, tmp_path: Path) -> None:
    from oaipipe.base import Context
    from oaipipe.plugins import KINDS, PluginHost

    code = _doc_plugin_examples()[index]
    (tmp_path / f"doc_example_{index}.py").write_text(code, encoding="utf-8")
    host = PluginHost([f"doc_example_{index}.py"], base_dir=tmp_path, entry_points=False)
    mine = [r for kind in KINDS for r in host.registry[kind].values() if r.plugin == f"doc_example_{index}"]
    hooks = set(re.findall(r"^def (\w+)\(", code, re.M)) & set(HOOKS)
    if any(h.startswith("register_") and h != "register_commands" for h in hooks):
        assert mine, f"example {index} registers nothing"
    for reg in mine:  # each registered class builds from its default options (where it has no required ones)
        required = [n for n, f in reg.cls.Options.model_fields.items() if f.is_required() and n != "type"]
        if not required:
            host.build(reg.kind, {"type": reg.name}, Context(base_dir=tmp_path, host=host))


# --- every hook, called through the plugin manager on an installed plugin -----------------------

META_PLUGIN = '''
"""A plugin implementing every hook; each implementation logs its call to $META_PLUGIN_LOG."""
import json
import os
import secrets

import click

from oaipipe import (Analyzer, Backend, CacheStore, ChatRequest, ChatResponse, Exchange, Record, Sentiment, Sink,
                     Source, Step, Trainer, Usage, hookimpl)


def log(hook, **data):
    with open(os.environ["META_PLUGIN_LOG"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"hook": hook, **data}) + "\\n")


class MetaSource(Source):
    def records(self):
        for i in range(1, 4):
            yield Record(id=f"m{i}", data={"text": f"meta text {i}"}, where=f"meta row {i}")


class MetaAnalyzer(Analyzer):
    def analyze(self, text):
        return Sentiment("positive", 0.25, self.name)


class MetaBackend(Backend):
    async def chat(self, request):
        return ChatResponse(text="meta reply to " + request.messages[-1]["content"], model=request.model,
                            backend=self.name, usage=Usage(3, 4, 7))


class MetaStep(Step):
    async def run(self, fields, ctx):
        messages = [{"role": "user", "content": fields["text"]}]
        response = await ctx.chat(ChatRequest(messages=messages, model=ctx.backend.options.model, step=self.label))
        ctx.exchanges.append(Exchange(record_id=ctx.record.id, step=self.label, model=response.model,
                                      backend=response.backend, usage=response.usage,
                                      messages=[*messages, {"role": "assistant", "content": response.text}]))
        return {self.options.output: response.text}


class MetaSink(Sink):
    def open(self, run, done_ids=None):
        self.fh = open(self.context.path("meta-sink.jsonl"), "a", encoding="utf-8")

    def write(self, result):
        self.fh.write(json.dumps({"id": result.record.id, "reply": result.fields.get("reply")}) + "\\n")

    def close(self):
        if getattr(self, "fh", None):
            self.fh.close()
            self.fh = None


class MetaTrainer(Trainer):
    class Options(Trainer.Options):
        type: str = "meta-trainer"

    in_process = True

    def launch(self, dataset, job):
        log("launch", n_train=dataset.n_train)
        job.id = "ftjob-meta-" + secrets.token_hex(4)
        job.status = "succeeded"
        job.fine_tuned_model = "ft:gpt-4o-mini:meta"
        return job

    def refresh(self, job):
        return job

    def cancel(self, job):
        job.status = "cancelled"
        return job


class MetaStore(CacheStore):
    entries = {}

    def get(self, key):
        return self.entries.get(key)

    def put(self, key, value):
        log("store_put", key=key)
        self.entries[key] = value

    def stats(self):
        return {"store": self.name, "entries": len(self.entries)}

    def clear(self, older_than=None):
        n = len(self.entries)
        self.entries.clear()
        return n


@click.command("meta-hello")
def meta_hello():
    """Say hello (registered by the meta plugin)."""
    click.echo("hello from the meta plugin")


@hookimpl
def register_sources(register):
    log("register_sources")
    register("meta-source", MetaSource)


@hookimpl
def register_analyzers(register):
    log("register_analyzers")
    register("meta-analyzer", MetaAnalyzer)


@hookimpl
def register_backends(register):
    log("register_backends")
    register("meta-backend", MetaBackend)


@hookimpl
def register_steps(register):
    log("register_steps")
    register("meta-step", MetaStep)


@hookimpl
def register_sinks(register):
    log("register_sinks")
    register("meta-sink", MetaSink)


@hookimpl
def register_trainers(register):
    log("register_trainers")
    register("meta-trainer", MetaTrainer)


@hookimpl
def register_commands(cli):
    log("register_commands")
    cli.add_command(meta_hello)


@hookimpl
def register_cache_stores(register):
    log("register_cache_stores")
    register("meta-store", MetaStore)


@hookimpl
def oaipipe_run_start(run):
    log("oaipipe_run_start", run_id=run.run_id, resumed=run.resumed)


@hookimpl
def oaipipe_record_done(run, result):
    log("oaipipe_record_done", run_id=run.run_id, id=result.record.id, ok=result.error is None)


@hookimpl
def oaipipe_run_finish(run, summary):
    log("oaipipe_run_finish", run_id=run.run_id, status=summary["status"], train=summary.get("train"))
'''

META_PIPELINE: dict[str, Any] = {
    "name": "meta",
    "backend": {"type": "meta-backend"},
    "source": {"type": "meta-source"},
    "steps": [
        {"type": "meta-step", "output": "reply"},
        {"type": "sentiment", "analyzer": "meta-analyzer", "input": "{reply}", "output": "mood"},
    ],
    "sinks": [{"type": "meta-sink"}, {"type": "jsonl", "path": "out/records.jsonl"}],
    "train": {"type": "meta-trainer", "min_examples": 3},
    "run": {"cache": {"type": "meta-store"}},
}


@dataclass
class Exercised:
    """What running the meta plugin left: its call log, the run's result and records, the command's output."""

    calls: list[dict[str, Any]]
    run: Any
    project: Any
    command: Any

    def logged(self, hook: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["hook"] == hook]


def install_as_package(folder: Path) -> Path:
    """``meta_plugin`` as an installed distribution declaring an entry point in the ``oaipipe`` group."""
    (folder / "meta_plugin.py").write_text(META_PLUGIN, encoding="utf-8")
    info = folder / "oaipipe_meta_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: oaipipe-meta-plugin\nVersion: 0.1\n",
                                   encoding="utf-8")
    (info / "entry_points.txt").write_text("[oaipipe]\nmeta = meta_plugin\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def exercised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exercised]:
    import click

    from oaipipe.cli import cli
    from oaipipe.testing import PipelineProject

    # the process-wide command group loads its plugin commands once: let it do so before the meta plugin
    # is installed, so that the command it adds stays out of the other tests' command line
    cli.list_commands(click.Context(cli))
    site = install_as_package(tmp_path_factory.mktemp("site"))
    log = tmp_path_factory.mktemp("log") / "calls.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OAIPIPE_HOME", str(tmp_path_factory.mktemp("home")))
        mp.delenv("OPENAI_API_KEY", raising=False)
        mp.setenv("META_PLUGIN_LOG", str(log))
        mp.syspath_prepend(str(site))
        project = PipelineProject(tmp_path_factory.mktemp("project"))
        project.write(META_PIPELINE)
        try:
            run = project.run()
            command = project.cli_process("meta-hello", env={"PYTHONPATH": str(site)})
        finally:
            sys.modules.pop("meta_plugin", None)
        calls = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        yield Exercised(calls, run, project, command)


def _registered(hook: str, check: Callable[[Exercised], None]) -> Callable[[Exercised], None]:
    def verify(ex: Exercised) -> None:
        assert ex.logged(hook), f"{hook} was never called"
        check(ex)
    return verify


def _run_ok(ex: Exercised) -> dict[str, Any]:
    assert ex.run.exit_code == 0, ex.run
    return ex.run.summary


#: hook -> what shows that the component or call of the meta plugin did its part
HOOK_CHECKS: dict[str, Callable[[Exercised], None]] = {
    "register_sources": _registered("register_sources", lambda ex: _check_source(ex)),
    "register_analyzers": _registered("register_analyzers", lambda ex: _check_fields(ex, "mood", "positive")),
    "register_backends": _registered("register_backends", lambda ex: _check_backend(ex)),
    "register_steps": _registered("register_steps", lambda ex: _check_fields(ex, "reply", None)),
    "register_sinks": _registered("register_sinks", lambda ex: _check_sink(ex)),
    "register_trainers": _registered("register_trainers", lambda ex: _check_trainer(ex)),
    "register_commands": _registered("register_commands", lambda ex: _check_command(ex)),
    "register_cache_stores": _registered("register_cache_stores", lambda ex: _check_store(ex)),
    "oaipipe_run_start": lambda ex: _check_lifecycle(ex, "oaipipe_run_start"),
    "oaipipe_record_done": lambda ex: _check_lifecycle(ex, "oaipipe_record_done"),
    "oaipipe_run_finish": lambda ex: _check_lifecycle(ex, "oaipipe_run_finish"),
}


def _check_source(ex: Exercised) -> None:
    _run_ok(ex)
    assert [(e["id"], e["where"]) for e in ex.project.journal()] == [(f"m{i}", f"meta row {i}") for i in (1, 2, 3)]


def _check_fields(ex: Exercised, field: str, value: str | None) -> None:
    _run_ok(ex)
    records = ex.project.records("out/records.jsonl")
    assert [r["_id"] for r in records] == ["m1", "m2", "m3"]
    for record in records:
        expected = value if value is not None else f"meta reply to {record['text']}"
        assert record[field] == expected, record


def _check_backend(ex: Exercised) -> None:
    summary = _run_ok(ex)
    assert summary["backend"] == "meta-backend"
    assert summary["calls"] == 3 and summary["tokens"]["total"] == 21, summary
    _check_fields(ex, "reply", None)


def _check_sink(ex: Exercised) -> None:
    _run_ok(ex)
    lines = ex.project.records("meta-sink.jsonl")
    assert [line["id"] for line in lines] == ["m1", "m2", "m3"]
    assert lines[0]["reply"] == "meta reply to meta text 1"


def _check_trainer(ex: Exercised) -> None:
    train = _run_ok(ex)["train"]
    assert train["status"] == "succeeded" and train["fine_tuned_model"] == "ft:gpt-4o-mini:meta", train
    assert [c["n_train"] for c in ex.logged("launch")] == [3]


def _check_store(ex: Exercised) -> None:
    summary = _run_ok(ex)
    assert len(ex.logged("store_put")) == 3, ex.logged("store_put")  # each of the 3 calls stored in it
    assert summary["cache"]["writes"] == 3, summary["cache"]


def _check_command(ex: Exercised) -> None:
    assert ex.command.exit_code == 0, ex.command
    assert ex.command.out.strip() == "hello from the meta plugin"


def _check_lifecycle(ex: Exercised, hook: str) -> None:
    run_id = _run_ok(ex)["run_id"]
    order = [c["hook"] for c in ex.calls if c["hook"].startswith("oaipipe_") and c.get("run_id") == run_id]
    assert order == ["oaipipe_run_start", *["oaipipe_record_done"] * 3, "oaipipe_run_finish"], order
    assert hook in order
    done = ex.logged("oaipipe_record_done")
    assert [(c["id"], c["ok"]) for c in done] == [("m1", True), ("m2", True), ("m3", True)]
    assert ex.logged("oaipipe_run_start")[0]["resumed"] is False
    finish = ex.logged("oaipipe_run_finish")[0]
    assert finish["status"] == "finished" and finish["train"]["status"] == "succeeded"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_called_through_the_plugin_manager(hook: str, exercised: Exercised) -> None:
    check = HOOK_CHECKS.get(hook)
    if check is None:
        pytest.fail(f"hook {hook} is exercised by no test: implement it in META_PLUGIN (tests/test_meta.py), "
                    f"use it in META_PIPELINE or the command, and add a check to HOOK_CHECKS")
    check(exercised)


def test_the_hook_checks_name_only_existing_hooks() -> None:
    assert set(HOOK_CHECKS) <= set(HOOKS), set(HOOK_CHECKS) - set(HOOKS)
    implemented = set(re.findall(r"^@hookimpl\ndef (\w+)\(", META_PLUGIN, re.M))
    assert implemented == set(HOOKS)


# --- built-in plugins ---------------------------------------------------------------------------

BUILTIN = PACKAGE / "builtin"
PUBLIC_BUILTINS = sorted(p.stem for p in BUILTIN.glob("*.py") if not p.name.startswith("_"))


def _hookimpls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
            and any((isinstance(d, ast.Name) and d.id == "hookimpl")
                    or (isinstance(d, ast.Attribute) and d.attr == "hookimpl") for d in node.decorator_list)]


@pytest.mark.parametrize("stem", PUBLIC_BUILTINS)
def test_every_builtin_module_is_registered(stem: str) -> None:
    import importlib

    from oaipipe.plugins import DEFAULT_PLUGINS, PluginHost

    dotted = f"oaipipe.builtin.{stem}"
    assert dotted in DEFAULT_PLUGINS, f"{dotted} is not in oaipipe.plugins.DEFAULT_PLUGINS: it is never loaded"
    host = PluginHost(entry_points=False)
    assert host.pm.get_plugin(stem) is importlib.import_module(dotted)
    assert host.info[stem].origin == "builtin"
    impls = _hookimpls(BUILTIN / f"{stem}.py")
    assert impls, f"{dotted} implements no hook"
    for name in impls:  # pluggy sees each of its implementations
        assert any(impl.plugin_name == stem for impl in getattr(host.pm.hook, name).get_hookimpls()), name


def test_default_plugins_name_only_existing_builtin_modules() -> None:
    from oaipipe.plugins import DEFAULT_PLUGINS

    assert sorted(name.rsplit(".", 1)[-1] for name in DEFAULT_PLUGINS) == PUBLIC_BUILTINS


KIT = PACKAGE / "kit"


@pytest.mark.parametrize("path", sorted(KIT.glob("*.py")), ids=lambda p: p.name)
def test_the_plugin_kit_implements_no_hook(path: Path) -> None:
    # a helper module is not registered: a hook implemented there would silently never be called
    assert _hookimpls(path) == []


def test_builtin_holds_no_private_helper_module() -> None:
    # what built-ins share is public, in oaipipe/kit/ (docs/plugins.md, "The plugin kit")
    assert sorted(p.name for p in BUILTIN.glob("_*.py") if p.name != "__init__.py") == []


#: built-in -> built-ins it may import from, and why (each one a known exception, not a pattern to copy)
BUILTIN_IMPORT_EXCEPTIONS: dict[str, set[str]] = {}


@pytest.mark.parametrize("stem", PUBLIC_BUILTINS)
def test_builtin_modules_import_nothing_from_other_builtin_modules(stem: str) -> None:
    """A built-in plugin imports the kit, never another built-in: each can be disabled or replaced alone,
    and what two of them share is in oaipipe.kit for every plugin author."""
    module = f"oaipipe.builtin.{stem}"
    found = sorted({name.split(".")[2] for name, _ in _imports(BUILTIN / f"{stem}.py", module)
                    if name.startswith("oaipipe.builtin.") and name != module})
    allowed = BUILTIN_IMPORT_EXCEPTIONS.get(stem, set())
    assert set(found) <= allowed, (f"{module} imports {sorted(set(found) - allowed)}: move what they share "
                                   f"into oaipipe/kit/ (public, documented)")


# --- the wall: the engine and the server are plain libraries ------------------------------------

#: what the engine and the server (and every project module they import) must not import
PLUGIN_MACHINERY = ("pluggy", "oaipipe.plugins", "oaipipe.hookspecs", "oaipipe.base", "oaipipe.builtin")


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for candidate in (REPO / rel.with_suffix(".py"), REPO / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) for every import in a file, relative ones resolved, lazy ones included."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            yield base, node.lineno
            for alias in node.names:  # `from . import chat`: a submodule
                if _module_file(f"{base}.{alias.name}") is not None:
                    yield f"{base}.{alias.name}", node.lineno


@pytest.mark.parametrize("library", ["engine", "server"])
def test_engine_and_server_do_not_import_the_plugin_machinery(library: str) -> None:
    """Neither the library nor any project module it imports, directly or not, imports pluggy, the plugin
    host, the hook specs, the base classes or a built-in plugin (``oaipipe/__init__.py``, which importing
    any submodule runs, is the package's facade and not part of the walk)."""
    todo = [f"oaipipe.{library}.{p.stem}" if p.stem != "__init__" else f"oaipipe.{library}"
            for p in sorted((PACKAGE / library).glob("*.py"))]
    seen: dict[str, str] = {name: "" for name in todo}
    walked = 0
    while todo:
        module = todo.pop()
        path = _module_file(module)
        assert path is not None, module
        walked += 1
        for name, line in _imports(path, module):
            where = f"{path.relative_to(REPO)}:{line}"
            chain = f"{seen[module]} -> {where}" if seen[module] else where
            forbidden = [m for m in PLUGIN_MACHINERY if name == m or name.startswith(m + ".")]
            assert not forbidden, f"oaipipe/{library} reaches the plugin machinery: {chain} imports {name}"
            if name.startswith("oaipipe.") and name not in seen and _module_file(name) is not None:
                seen[name] = chain
                todo.append(name)
    assert walked >= len(list((PACKAGE / library).glob("*.py")))


def test_the_wall_test_would_see_a_forbidden_import(tmp_path: Path) -> None:
    path = tmp_path / "x.py"
    path.write_text("def f():\n    from ..base import Step\n    from .. import plugins\n", encoding="utf-8")
    found = [name for name, _ in _imports(path, "oaipipe.server.x")]
    assert "oaipipe.base" in found and "oaipipe.plugins" in found


# --- the test kit, as a plugin author uses it ---------------------------------------------------


def test_project_writes_runs_and_reads_back(tmp_path: Path) -> None:
    from oaipipe.testing import DEFAULT_REVIEWS, PipelineProject

    project = PipelineProject(tmp_path)
    project.write(steps=[{"type": "sentiment", "analyzer": "keyword", "input": "{text}", "output": "mood"}],
                  sinks=[{"type": "jsonl", "path": "out/r.jsonl"}, {"type": "csv", "path": "out/r.csv"}])
    assert (tmp_path / "reviews.csv").is_file() and (tmp_path / "pipeline.yaml").is_file()
    result = project.run()
    assert result.exit_code == 0, result
    assert result.summary["records"]["done"] == len(DEFAULT_REVIEWS)
    assert [r["_id"] for r in project.records()] == [r[0] for r in DEFAULT_REVIEWS]
    assert [r["record_id"] for r in project.records("csv")] == [r[0] for r in DEFAULT_REVIEWS]
    assert len(project.journal()) == len(DEFAULT_REVIEWS) and project.errors() == []
    assert project.summary()["run_id"] == result.summary["run_id"] == project.run_dir().name
    again = project.run(as_json=False)
    assert again.exit_code == 0 and "already finished: nothing to do" in again.out
    assert again.summary is None
    broken = project.cli("validate", str(project.write(steps=[{"type": "sentiment", "input": "{txt}",
                                                                "output": "m"}])))
    assert broken.exit_code == 2 and "txt" in broken.err


def test_project_writes_rows_and_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    from oaipipe.testing import PipelineProject

    project = PipelineProject(tmp_path)
    project.write_file("a/rows.csv", [{"id": "1", "text": "x, y"}])
    project.write_file("a/rows.jsonl", [{"id": 1}, {"id": 2}])
    project.write_file("a/plugin.py", """
        from oaipipe import hookimpl
    """)
    assert (tmp_path / "a/rows.csv").read_text(encoding="utf-8").splitlines() == ["id,text", '1,"x, y"']
    assert project.records("a/rows.jsonl") == [{"id": 1}, {"id": 2}]
    assert (tmp_path / "a/plugin.py").read_text(encoding="utf-8").startswith("\nfrom oaipipe import hookimpl")
    with pytest.raises(TypeError):
        project.write_file("a/x.bin", [1, 2])
    with pytest.raises(TypeError):
        project.write("name: x\n", steps=[])


def test_wait_until_returns_the_value_or_names_what_it_waited_for() -> None:
    from oaipipe.testing import wait_until

    values = iter([0, 0, 7])
    assert wait_until(lambda: next(values), timeout=5) == 7
    with pytest.raises(AssertionError, match="the impossible"):
        wait_until(lambda: False, timeout=0.05, message="the impossible")


def _testing_doc_examples() -> str:
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    section = re.search(r"^## Testing your plugin\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "docs/plugins.md has no '## Testing your plugin' section"
    blocks = re.findall(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    assert len(blocks) >= 2
    return "\n\n".join(blocks)


@pytest.mark.slow
def test_the_testing_docs_pass_as_a_plugin_authors_suite(tmp_path: Path) -> None:
    """The examples of "Testing your plugin" run in a fresh pytest, outside this repository, with the
    fixtures coming from the installed entry point alone (no conftest.py)."""
    (tmp_path / "test_from_docs.py").write_text(textwrap.dedent(_testing_doc_examples()), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_from_docs.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout, proc.stdout


if __name__ == "__main__":  # pragma: no cover
    print(generated_reference())

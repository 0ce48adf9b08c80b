"""Every third-party module oaipipe imports is declared in pyproject.toml, with a lower bound.

``numpy`` and ``httpx2`` were imported but not declared, and ``openai>=1.40`` admitted openai 2.x releases
without ``DefaultHttpx2Client``, with which even ``oaipipe --help`` crashed. The imports are read with
``ast`` from every module of ``oaipipe/``; an import inside ``try:`` whose handler catches ``ImportError``
(or any ``Exception``) is optional and may be declared in an extra instead.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "oaipipe"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")
_GUARDS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(dependencies, optional extras) of pyproject.toml as {normalized name: version spec}."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def parse(items: list[str]) -> dict[str, str]:
        out = {}
        for item in items:
            m = _NAME.match(item.split(";")[0])
            assert m, f"cannot read the requirement {item!r}"
            out[_normalize(m.group(1))] = m.group(3).strip()
        return out

    extras = {name: parse(items) for name, items in project.get("optional-dependencies", {}).items()}
    return parse(project["dependencies"]), extras


def _guarded(handlers: list[ast.ExceptHandler]) -> bool:
    for handler in handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if handler.type is None or any(isinstance(k, ast.Name) and k.id in _GUARDS for k in kinds):
            return True
    return False


def _imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(top-level module, line, optional?) of every absolute import in ``tree``."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Try):
            guarded = optional or _guarded(node.handlers)
            for child in node.body:
                visit(child, guarded)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], node.lineno, optional) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno, optional))
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(tree, False)
    return found


def _third_party_imports() -> list[tuple[str, str, bool]]:
    """(module, "file:line", optional?) for every import of a module outside the standard library."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for module, line, optional in _imports(tree):
            if module in sys.stdlib_module_names or module in ("oaipipe", "__future__"):
                continue
            out.append((module, f"{path.relative_to(REPO)}:{line}", optional))
    return out


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    """The distributions that provide ``module`` (installed); a missing optional module maps to its own name."""
    return {_normalize(d) for d in _packages_distributions().get(module, [])} or {_normalize(module)}


def test_the_scan_sees_the_imports_it_must_check() -> None:
    seen = {(module, optional) for module, _, optional in _third_party_imports()}
    assert {("openai", False), ("httpx2", False), ("numpy", False), ("PIL", False), ("tiktoken", True)} <= seen


def test_every_imported_distribution_is_declared_with_a_lower_bound() -> None:
    required, extras = _declared()
    optional = {name for deps in (v for k, v in extras.items() if k != "test") for name in deps}
    problems = []
    for module, where, is_optional in _third_party_imports():
        dists = _distributions(module)
        if dists & required.keys():
            continue
        if is_optional and dists & optional:
            continue
        kind = "an optional extra or dependencies" if is_optional else "[project] dependencies"
        problems.append(f"{where}: `{module}` (distribution {', '.join(sorted(dists))}) is not declared in {kind}")
    assert not problems, "\n".join(problems)
    for name, spec in [*required.items(), *((n, s) for deps in extras.values() for n, s in deps.items())]:
        assert ">=" in spec or "==" in spec, f"{name} has no lower bound in pyproject.toml: {spec!r}"


def test_openai_is_bounded_below_by_the_first_release_with_the_httpx2_clients() -> None:
    """openai 2.47.0 is the first release with ``DefaultHttpx2Client``/``DefaultAsyncHttpx2Client``
    (which backend_openai uses); the suite passes with openai 2.47.0 + httpx2 2.7.0 (bench/README.md)."""
    required, _ = _declared()
    assert required["openai"] == ">=2.47"
    assert required["httpx2"] == ">=2.7"
    import openai

    assert hasattr(openai, "DefaultHttpx2Client") and hasattr(openai, "DefaultAsyncHttpx2Client")


BLOCK = textwrap.dedent("""\
    import sys
    for name in {blocked!r}:
        sys.modules[name] = None  # `import name` now raises ImportError, as if it were not installed
    from oaipipe.cli import main
    raise SystemExit(main(sys.argv[1:]))
""")


def _oaipipe_without(blocked: list[str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(blocked=blocked), *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("blocked", [["openai"], ["httpx2"], ["openai", "httpx2"]])
def test_help_works_when_a_backend_library_is_missing(blocked: list[str]) -> None:
    done = _oaipipe_without(blocked, "--help")
    assert done.returncode == 0, done.stderr
    for command in ("run", "validate", "models", "describe"):
        assert command in done.stdout


def test_a_backend_whose_library_is_missing_is_named_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("id,text\n1,good mug\n", encoding="utf-8")
    for backend in ("local", "openai"):
        (tmp_path / f"{backend}.yaml").write_text(
            f"name: {backend}\nbackend: {{type: {backend}, base_url: 'http://127.0.0.1:9/v1'}}\n"
            "source: {type: csv, path: r.csv, id_column: id}\n"
            "steps: [{type: ask, prompt: 'Reply to: {text}', output: reply}]\n", encoding="utf-8")
    ok = _oaipipe_without(["openai", "httpx2"], "run", str(tmp_path / "local.yaml"), "-q", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr  # the local engine needs neither
    bad = _oaipipe_without(["openai", "httpx2"], "validate", str(tmp_path / "openai.yaml"), cwd=tmp_path)
    assert bad.returncode == 2
    assert "backend_openai" in bad.stderr and "pip install" in bad.stderr
    assert "Traceback" not in bad.stderr

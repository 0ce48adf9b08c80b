"""Check that given tests kill given mutants, without a mutmut run: each mutant's diff (``mutmut show``) is
applied to a fresh copy of ``oaipipe/`` and the tests are run against that copy.

Usage (from the repository root, after a mutmut run: its ``mutants/`` holds the diffs)::

    python bench/mutmut_killcheck.py 'tests/test_keys.py::test_a tests/test_keys.py::test_b' MUTANT [MUTANT ...]

Prints ``killed`` or ``SURVIVED`` per mutant. This is how docs/mutation.md checks a survivor against the test
written for it (the ¹ of its tables), and finds the existing tests mutmut's coverage did not select.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _changes(diff: str) -> list[tuple[list[str], list[str]]]:
    """The diff's runs of removed and added lines."""
    out: list[tuple[list[str], list[str]]] = []
    minus: list[str] = []
    plus: list[str] = []
    for line in diff.splitlines():
        if line.startswith("-") and not line.startswith("---"):
            if plus:
                out.append((minus, plus))
                minus, plus = [], []
            minus.append(line[1:])
        elif line.startswith("+") and not line.startswith("+++"):
            plus.append(line[1:])
        elif minus or plus:
            out.append((minus, plus))
            minus, plus = [], []
    if minus or plus:
        out.append((minus, plus))
    return out


def _function_start(src: list[str], name: str) -> int:
    """The line of the mutated function: ``pkg.mod.x_f`` is ``f``, ``pkg.mod.xǁCǁm`` is ``C.m``."""
    module = name.split(".x")[0]
    func = name.rsplit("__mutmut_", 1)[0][len(module) + 2:]
    if "ǁ" in func:
        _, cls, meth = func.split("ǁ")
        start = next(i for i, line in enumerate(src) if re.match(rf"class {cls}\b", line))
        return next(i for i in range(start, len(src)) if re.match(rf"\s+(async )?def {re.escape(meth)}\(", src[i]))
    return next(i for i, line in enumerate(src) if re.match(rf"(async )?def {re.escape(func[1:])}\(", line))


def apply(name: str, diff: str, root: Path) -> None:
    """Apply mutant ``name`` (its ``diff``, indented as mutmut shows it) to the copy of the package in ``root``."""
    module = name.split(".x")[0]
    path = root / (module.replace(".", "/") + ".py")
    src = path.read_text(encoding="utf-8").split("\n")
    start = _function_start(src, name)
    for minus, plus in _changes(diff):
        n = len(minus)
        for i in range(start, len(src)):
            if [s.strip() for s in src[i:i + n]] == [m.strip() for m in minus]:
                shift = (len(src[i]) - len(src[i].lstrip())) - (len(minus[0]) - len(minus[0].lstrip()))
                src[i:i + n] = [(" " * shift + p) if shift >= 0 else p[-shift:] for p in plus]
                break
        else:
            raise RuntimeError(f"{name}: the lines it changes are not in {path.name}: {minus}")
    path.write_text("\n".join(src), encoding="utf-8")


def check(tests: list[str], name: str) -> bool:
    """True when ``tests`` fail on mutant ``name``."""
    diff = subprocess.run([sys.executable, "bench/mutmut_run.py", "show", name], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    work = Path(tempfile.mkdtemp(prefix="killcheck-"))
    try:
        shutil.copytree(ROOT / "oaipipe", work / "oaipipe")
        for entry in os.listdir(ROOT):  # the tests and their data, as they are
            if entry not in ("oaipipe", ".git", "mutants") and not entry.startswith(".venv"):
                os.symlink(ROOT / entry, work / entry)
        apply(name, diff, work)
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                             cwd=work, env={**os.environ, "PYTHONPATH": str(work)}, capture_output=True, text=True)
        return run.returncode != 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    tests = argv[0].split()
    survived = 0
    for name in argv[1:]:
        killed = check(tests, name)
        survived += not killed
        print("killed  " if killed else "SURVIVED", name, flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

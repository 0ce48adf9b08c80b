"""Start-up: ``oaipipe --help`` and ``oaipipe validate`` import none of the heavy libraries (issue 10 item 6).

Each command runs in a SUBPROCESS and the test reads that process's ``sys.modules``: in this process the
suite has loaded everything already (``oaipipe.testing`` is a pytest plugin). The time it takes is measured
in bench/startup.py (bench/README.md, "Start-up"), not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: what neither command may import: the SDK and its HTTP client, data frames, arrays, images, tokenizers,
#: and the optional extras' libraries
HEAVY = ("openai", "httpx2", "pandas", "numpy", "PIL", "bpe_openai", "tiktoken", "pyarrow", "plotly", "datasets",
         "aiohttp")

_RUNNER = """
import json, sys
sys.argv = ["oaipipe", *sys.argv[1:]]
from oaipipe.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
print("RESULT=" + json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}),
      file=sys.stderr)
"""


def _imported_by(*args: str, cwd: Path) -> set[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PYTHONPATH")}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    result = next((json.loads(line[7:]) for line in proc.stderr.splitlines() if line.startswith("RESULT=")), None)
    assert result is not None, proc.stderr
    assert result["code"] in (0, None), f"oaipipe {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return set(result["modules"])


@pytest.mark.parametrize("args", [("--help",), ("validate", "pipeline.yaml"), ("run", "--help")],
                         ids=["help", "validate", "run-help"])
def test_cli_start_up_imports_no_heavy_library(args: tuple[str, ...]) -> None:
    # the demo pipeline: the openai backend (falling back to local), a plugin file, every step type
    modules = _imported_by(*args, cwd=REPO)
    assert "oaipipe" in modules and "click" in modules  # the probe works
    heavy = sorted(modules & set(HEAVY))
    assert heavy == [], (f"`oaipipe {' '.join(args)}` imported {heavy}: import them where they are used "
                         f"(oaipipe.lazy.lazy_module, or a function-level import)")


def test_the_lazy_stand_in_imports_on_first_use() -> None:
    code = ("import sys\nfrom oaipipe.lazy import lazy_module\nm = lazy_module('colorsys')\n"
            "assert 'colorsys' not in sys.modules, 'imported too early'\n"
            "assert m.rgb_to_hsv(0.0, 0.0, 0.0) == (0.0, 0.0, 0.0)\nassert 'colorsys' in sys.modules\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_the_pytest_plugin_does_not_import_the_server() -> None:
    # oaipipe.testing is loaded by every pytest run that has oaipipe installed (the pytest11 entry point)
    code = ("import sys\nimport oaipipe.testing\n"
            f"print(sorted(m for m in sys.modules if m.startswith('oaipipe.server') or m.split('.')[0] in {HEAVY!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr

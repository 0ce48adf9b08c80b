"""Start-up time of the CLI: ``oaipipe --help``, ``oaipipe validate``, and a one-record run on the local engine.

Each command runs in a fresh process, ``--repeat`` times (hyperfine-style: one warm-up run first, then the
median and min of the wall times, and the median CPU time, which a loaded machine disturbs less), plus which heavy libraries each one imported::

    python bench/startup.py                      # this checkout
    python bench/startup.py --source /tmp/before # another checkout of oaipipe (e.g. `git archive` of a
                                                 # commit), put first on sys.path

Before timing, the measured oaipipe tree is byte-compiled (``compileall``), the state of a pip-installed
package: a checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (set on this machine) would otherwise compile
every module from source in every process (~0.2 CPU-s), a cost no installed oaipipe pays.
``--no-compile`` measures that state instead.

Not a test (timings depend on the machine); the figures are in bench/README.md, "Start-up".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("openai", "httpx2", "pandas", "numpy", "PIL", "bpe_openai", "tiktoken", "pyarrow", "plotly", "datasets",
         "requests")

#: run the CLI in this process, then print the heavy libraries it imported (on stderr, as JSON)
RUNNER = """
import json, sys
sys.argv = ["oaipipe", *sys.argv[1:]]
from oaipipe.cli import main
try:
    main()
except SystemExit:
    pass
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY_NAMES))
if "bpe_openai" in heavy and "bpe_openai" not in sys.modules:  # its native module alone (oaipipe.tokens)
    heavy[heavy.index("bpe_openai")] = "bpe_openai._bindings only"
print("HEAVY=" + json.dumps(heavy), file=sys.stderr)
""".replace("HEAVY_NAMES", repr(HEAVY))

PIPELINE = """\
name: startup
backend: {type: local, model: gpt-4o-mini}
source: {type: csv, path: in.csv, id_column: id}
steps:
  - {type: ask, prompt: "Reply to: {text}", output: reply}
sinks:
  - {type: jsonl, path: out.jsonl}
"""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _once(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, list[str]]:
    """Wall time and CPU time (user + system: less sensitive to a loaded machine) of one run."""
    start, cpu = time.perf_counter(), _cpu()
    proc = subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed, cpu_used = time.perf_counter() - start, _cpu() - cpu
    heavy = next((json.loads(line[6:]) for line in proc.stderr.splitlines() if line.startswith("HEAVY=")), None)
    if heavy is None:
        raise SystemExit(f"`oaipipe {' '.join(args)}` failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, cpu_used, heavy


def compile_tree(source: Path | None) -> None:
    """Byte-compile the oaipipe package that will be measured (``source``, or the installed one)."""
    if source is not None:
        package = source.resolve() / "oaipipe"
    else:
        import importlib.util

        spec = importlib.util.find_spec("oaipipe")
        assert spec is not None and spec.submodule_search_locations
        package = Path(next(iter(spec.submodule_search_locations)))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--source", type=Path, help="an oaipipe checkout to time instead of the installed one")
    parser.add_argument("--no-compile", action="store_true", help="do not byte-compile the measured tree first")
    opts = parser.parse_args()
    if not opts.no_compile:
        compile_tree(opts.source)
    env = dict(os.environ, OPENAI_API_KEY="", PYTHONDONTWRITEBYTECODE="1")
    env.pop("OPENAI_API_KEY")
    if opts.source:
        env["PYTHONPATH"] = str(opts.source.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "in.csv").write_text("id,text\n1,I love this product\n", encoding="utf-8")
        (work / "pipeline.yaml").write_text(PIPELINE, encoding="utf-8")
        commands = {
            "oaipipe --help": ["--help"],
            "oaipipe validate pipeline.yaml": ["validate", "pipeline.yaml"],
            "oaipipe run (1 record, local engine)": ["run", "pipeline.yaml", "--fresh"],
        }
        print("| command | wall median (s) | wall min (s) | CPU median (s) | heavy libraries imported |")
        print("|---|---|---|---|---|")
        for label, args in commands.items():
            _once(args, work, env)  # warm-up: byte-code and file caches
            times: list[float] = []
            cpus: list[float] = []
            heavy: list[str] = []
            for _ in range(opts.repeat):
                elapsed, cpu, heavy = _once(args, work, env)
                times.append(elapsed)
                cpus.append(cpu)
            print(f"| `{label}` | {statistics.median(times):.2f} | {min(times):.2f} | {statistics.median(cpus):.2f} | "
                  f"{', '.join(heavy) or '(none)'} |", flush=True)


if __name__ == "__main__":
    main()

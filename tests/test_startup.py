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
print("RESULT=" + json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules}),
                              "full": sorted(sys.modules)}), file=sys.stderr)
"""


def _imported_by(*args: str, cwd: Path, full: bool = False, env_extra: dict[str, str] | None = None) -> set[str]:
    """The top-level packages (``full``: every module name) that ``oaipipe ARGS`` imported in a subprocess."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PYTHONPATH")}
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    result = next((json.loads(line[7:]) for line in proc.stderr.splitlines() if line.startswith("RESULT=")), None)
    assert result is not None, proc.stderr
    assert result["code"] in (0, None), f"oaipipe {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return set(result["full" if full else "modules"])


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


#: a one-record run: the local engine, one ``ask`` step, one jsonl sink (bench/startup.py times the same)
ONE_RECORD = """\
name: startup
backend: {type: local, model: gpt-4o-mini}
source: {type: csv, path: in.csv, id_column: id}
steps:
  - {type: ask, prompt: "Reply to: {text}", output: reply}
sinks:
  - {type: jsonl, path: out.jsonl}
"""


def test_a_one_record_local_run_imports_only_the_native_tokenizer(tmp_path: Path) -> None:
    # issue 10 item 6: the local engine counts tokens exactly, with bpe-openai's native module alone; the
    # package's Python wrapper decodes three vocabularies at import (~0.5 CPU-s) and is not needed
    (tmp_path / "in.csv").write_text("id,text\n1,I love this product\n", encoding="utf-8")
    (tmp_path / "pipeline.yaml").write_text(ONE_RECORD, encoding="utf-8")
    modules = _imported_by("run", "pipeline.yaml", cwd=tmp_path, full=True,
                           env_extra={"OAIPIPE_HOME": str(tmp_path / "home")})
    assert json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))["reply"]  # the probe ran the record
    assert "bpe_openai._bindings" in modules  # tokens were counted, exactly
    top = {m.split(".")[0] for m in modules}
    unexpected = sorted(m for m in modules if m == "bpe_openai" or m.startswith("bpe_openai.")
                        if m != "bpe_openai._bindings") + sorted(top & (set(HEAVY) - {"bpe_openai"}))
    assert unexpected == [], f"a one-record local run imported {unexpected}"


def test_the_native_tokenizer_counts_exactly_what_bpe_openai_encodes() -> None:
    # the promise behind the shortcut: the count of every text is len(bpe_openai's encode_ordinary(text))
    import random

    import bpe_openai

    from oaipipe import tokens

    rnd = random.Random(7)
    pieces = [*"abc XYZ 123 \n\t.,'!?-<|>_éü漢字🙂\r", *tokens.SPECIAL_TOKENS["cl100k_base"], " the", "'s", "  "]
    texts = ["", "hello world", "a\ud800b"] + ["".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 80)))
                                               for _ in range(300)]
    for encoding, model in (("o200k_base", "gpt-4o-mini"), ("cl100k_base", "gpt-3.5-turbo")):
        enc = bpe_openai.get_encoding(encoding)
        assert tokens.special_tokens(encoding) == frozenset(enc.special_tokens_set)
        for text in texts:
            assert tokens.count_tokens(text, model) == len(enc.encode_ordinary(text)), (encoding, text)
    assert tokens.tokenizer_name() == "bpe-openai"


def test_an_openai_run_takes_neither_the_sdk_nor_the_tokenizer_wrapper(tmp_path: Path) -> None:
    # issue 14's C=16 target is a whole process: a run on the lean transport must not import the SDK (and
    # its HTTP client), and the token estimates of a learned TPM limit (the server sends x-ratelimit-*-tokens)
    # load the native tokenizer alone
    from oaipipe.testing import running_server

    rows = "".join(f"{i},review number {i} of a mug\n" for i in range(6))
    (tmp_path / "in.csv").write_text("id,text\n" + rows, encoding="utf-8")
    with running_server(tpm=10_000_000) as srv:
        (tmp_path / "pipeline.yaml").write_text(ONE_RECORD.replace(
            "{type: local, model: gpt-4o-mini}",
            f"{{type: openai, model: gpt-4o-mini, base_url: '{srv.base_url}', api_key: test, concurrency: 1}}"),
            encoding="utf-8")
        modules = _imported_by("run", "pipeline.yaml", "-q", cwd=tmp_path, full=True,
                               env_extra={"OAIPIPE_HOME": str(tmp_path / "home")})
        assert srv.stats()["by_path"] == {"/v1/chat/completions": 6}
    assert len((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()) == 6
    assert "aiohttp" in modules and "bpe_openai._bindings" in modules  # the lean transport; the estimates
    top = {m.split(".")[0] for m in modules}
    unexpected = sorted(m for m in modules if m == "bpe_openai" or m.startswith("bpe_openai.")
                        if m != "bpe_openai._bindings") + sorted(top & (set(HEAVY) - {"bpe_openai", "aiohttp"}))
    assert unexpected == [], f"an openai run on the lean transport imported {unexpected}"

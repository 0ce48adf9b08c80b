"""The call chain as a value (oaipipe.calls): cache → rate limits → retries → transport, built once per run
from the pipeline and plain run options; the project's own modules imported without ImportError guards."""

from __future__ import annotations

import ast
import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
from _scale_util import write_pipeline

from oaipipe.calls import CallChain, RateLimitLayer, RetryLayer
from oaipipe.pipeline import load_pipeline
from oaipipe.ratelimit import RateLimiter
from oaipipe.runner import Runner, RunOptions, run_pipeline, run_pipeline_file
from oaipipe.types import ChatRequest, ChatResponse

REPO = Path(__file__).resolve().parent.parent
OPENAI = "{type: openai, base_url: 'http://127.0.0.1:9/v1'}"


def _chain(tmp_path: Path, backend: str, options: RunOptions | None = None, **kwargs: Any) -> CallChain:
    return CallChain.build(load_pipeline(write_pipeline(tmp_path, backend, n=1, **kwargs)), options or RunOptions())


@pytest.mark.parametrize(("backend", "layers"), [
    (OPENAI, "cache → rate limits → retries → transport"),
    ("{type: batch, base_url: 'http://127.0.0.1:9/v1'}", "cache → retries → transport"),  # the Batch API queues
    ("{type: local}", "retries → transport"),  # free and deterministic: not cached; no limits to learn
    ("{type: local, rpm: 600}", "rate limits → retries → transport"),  # configured limits apply to any backend
])
def test_the_layers_in_httpx_order(tmp_path: Path, backend: str, layers: str) -> None:
    assert _chain(tmp_path, backend).describe() == layers


def test_switches_and_the_callers_own_layers(tmp_path: Path) -> None:
    def mine(call: Any) -> Any:
        async def logged(request: ChatRequest) -> ChatResponse:
            return await call(request)

        return logged

    assert _chain(tmp_path, OPENAI, RunOptions(use_cache=False)).describe() == "rate limits → retries → transport"
    assert _chain(tmp_path, OPENAI, extra="run: {cache: false}\n").cache is None
    assert _chain(tmp_path, OPENAI, RunOptions(scale=False)).describe() == "transport"
    chain = _chain(tmp_path, OPENAI, RunOptions(call_wrappers=[mine]))
    assert chain.describe() == "cache → rate limits → retries → call_wrappers → transport"


def test_run_options_stay_plain_settings(tmp_path: Path) -> None:
    """Nothing a run installs is kept on its options: one RunOptions serves any number of runs and pipelines."""
    options = RunOptions(limit=3)
    before = copy.deepcopy(options)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    summary = asyncio.run(run_pipeline(load_pipeline(write_pipeline(tmp_path / "a", "{type: local}", n=5)), options))
    assert summary["records"]["done"] == 3
    other = load_pipeline(write_pipeline(tmp_path / "b", OPENAI, n=1))
    chain = CallChain.build(other, options)  # the same options for another pipeline: its own cache and limits
    assert chain.cache is not None and chain.limiter is not None
    assert options == before and vars(options).keys() == vars(before).keys()


def test_the_limiter_listens_to_the_retry_policy_once(tmp_path: Path) -> None:
    """The rate limiter hears the backend's retries through the policy's listeners (a callback): one
    limiter per run, the newest replacing the one of an earlier run of the same backend."""
    pipeline = load_pipeline(write_pipeline(tmp_path, OPENAI, n=1))
    policy = pipeline.backend.policy  # type: ignore[attr-defined]
    first = CallChain.build(pipeline, RunOptions())
    second = CallChain.build(pipeline, RunOptions())
    limiters = [x for x in policy.listeners if isinstance(x, RateLimiter)]
    assert limiters == [second.limiter] and first.limiter is not second.limiter
    retry = next(layer for layer in second.layers if isinstance(layer, RetryLayer))
    assert policy.stats is retry.stats is second.retries  # this run's attempts are counted here


def test_a_cache_hit_never_takes_a_rate_limit_turn(tmp_path: Path) -> None:
    pipeline = load_pipeline(write_pipeline(tmp_path, "{type: local, rpm: 600}", n=1))
    chain = CallChain.build(pipeline, RunOptions())
    assert chain.cache is None and chain.limiter is not None  # local: no cache; set one up by hand below
    from oaipipe.cache import ResponseCache
    from oaipipe.calls import CacheLayer

    cache = ResponseCache(tmp_path / "cache")
    turns: list[str] = []

    async def transport(request: ChatRequest) -> ChatResponse:
        return ChatResponse(text="hi", model="m", backend="b")

    async def counted(request: ChatRequest) -> ChatResponse:
        turns.append(request.step)
        return await limited(request)

    limited = RateLimitLayer(transport, RateLimiter(rpm=600))
    outer = CacheLayer(counted, cache)
    request = ChatRequest(messages=[{"role": "user", "content": "x"}], model="m", step="s")
    first = asyncio.run(outer(request))
    again = asyncio.run(outer(request))
    assert not first.cached and again.cached and turns == ["s"]  # the hit was answered outside the limiter


def test_the_summary_reports_what_the_chain_installed(tmp_path: Path, server) -> None:
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}', rpm: 6000}}", n=3)
    summary = run_pipeline_file(path)
    assert summary["cache"]["writes"] == 3 and summary["rate_limit"]["rpm"] == 6000
    assert summary["attempts"] == 3 and summary["retries"]["total"] == 0
    runner = Runner(load_pipeline(path), RunOptions(fresh=True))
    assert set(runner.calls.summary()) == {"cache", "rate_limit"}


# --- the project's own modules are imported plainly --------------------------------------------------------


def _guarded_own_imports(path: Path) -> list[int]:
    """Lines of ``try: from . import x / import oaipipe.x`` blocks caught with ``except ImportError``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Try):
            continue
        caught = set()
        for handler in node.handlers:
            names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            caught |= {n.id for n in names if isinstance(n, ast.Name)}
        if not caught & {"ImportError", "ModuleNotFoundError"}:
            continue
        for inner in (n for stmt in node.body for n in ast.walk(stmt)):
            own = (isinstance(inner, ast.ImportFrom) and (inner.level > 0 or (inner.module or "").startswith("oaipipe"))) \
                or (isinstance(inner, ast.Import) and any(a.name.startswith("oaipipe") for a in inner.names))
            if own:
                found.append(inner.lineno)
    return found


def test_no_import_of_the_project_is_guarded_by_except_import_error() -> None:
    found = [f"{path.relative_to(REPO)}:{line}" for path in sorted((REPO / "oaipipe").rglob("*.py"))
             for line in _guarded_own_imports(path)]
    assert not found, "the project's own modules ship with it: import them plainly\n" + "\n".join(found)


def test_the_import_guard_check_finds_a_guard(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("try:\n    from .scale import configure_run\nexcept ImportError:\n    pass\n"
                      "try:\n    import fcntl\nexcept ImportError:\n    pass\n", encoding="utf-8")
    assert _guarded_own_imports(sample) == [2]

"""``mutmut`` with two changes, for the mutation-testing run of docs/mutation.md.

Usage (from the repository root, in a venv with ``pip install -e '.[test,mutation]'``)::

    nice -n 10 python bench/mutmut_run.py run --max-children 2 "oaipipe.keys.*"
    python bench/mutmut_run.py results

It is ``mutmut`` itself (same arguments), with two changes:

* **Each module is tested by its own test files** (:data:`MODULE_TESTS`). mutmut runs, for a mutant, every
  test that reached the mutated function in its first (coverage) run; for ``is_openai_url`` or the price
  table that is most of the suite (130-200 tests, a minute each mutant on this machine). Here a mutant of
  ``oaipipe/keys.py`` runs only the tests of ``tests/test_keys.py`` and ``tests/test_secrets.py`` that reached
  the function: the mutation score says how well a module's *own* tests pin it.
* mutmut's call-depth tracking keeps its state in a per-thread value instead of a
  ``contextvars.ContextVar``: on CPython 3.11 the stats run of this suite crashed (SIGSEGV inside
  ``ContextVar.set``, called from mutmut's trampoline) once the suite had started its loopback servers and
  event loops. The state only serves mutmut's optional dependency tracking (``track_dependencies = false``
  in pyproject.toml), not which mutant runs or which test kills it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import mutmut.__main__
import mutmut.core
from mutmut.state import state

#: module -> the test files whose tests may kill its mutants (each limited further to the tests that
#: reached the mutated function)
MODULE_TESTS: dict[str, tuple[str, ...]] = {
    "oaipipe.keys": ("tests/test_keys.py", "tests/test_secrets.py"),
    "oaipipe.runner": ("tests/test_runner.py", "tests/test_resilience.py", "tests/test_promises.py",
                       "tests/test_dryrun.py"),
    "oaipipe.resume": ("tests/test_resume.py", "tests/test_runner.py", "tests/test_promises.py"),
    "oaipipe.retry": ("tests/test_retry.py", "tests/test_retry_stats.py"),
    "oaipipe.ratelimit": ("tests/test_ratelimit.py", "tests/test_adaptive_ratelimit.py"),
    "oaipipe.cache": ("tests/test_cache.py", "tests/test_calls.py", "tests/test_promises.py"),
    "oaipipe.cache_sqlite": ("tests/test_cache_sqlite.py",),
    "oaipipe.pricing": ("tests/test_pricing.py", "tests/test_prices_strict.py", "tests/test_dryrun.py",
                        "tests/test_batch.py", "tests/test_promises.py"),
    "oaipipe.dryrun": ("tests/test_dryrun.py", "tests/test_promises.py"),
    "oaipipe.training.validate": ("tests/test_validation.py", "tests/test_training_cli.py",
                                  "tests/test_promises.py"),
}


class _ThreadValue(threading.local):
    """``get``/``set``/``reset`` of a ``ContextVar``, per thread."""

    value: Any = (None, 0)

    def get(self) -> Any:
        return self.value

    def set(self, value: Any) -> Any:
        old, self.value = self.value, value
        return old

    def reset(self, token: Any) -> None:
        self.value = token


mutmut.core.MutmutCallStack._ctx = _ThreadValue()  # type: ignore[assignment]

_collect_or_load_stats = mutmut.__main__.collect_or_load_stats


def _own_tests_only(*args: Any, **kwargs: Any) -> None:
    """mutmut's stats, then each module's function -> tests map cut down to :data:`MODULE_TESTS`."""
    _collect_or_load_stats(*args, **kwargs)
    tests = state().tests_by_mangled_function_name
    for function, names in tests.items():
        module = function.rsplit(".", 1)[0]
        files = MODULE_TESTS.get(module)
        if files is not None:
            tests[function] = {n for n in names if n.split("::", 1)[0] in files}


mutmut.__main__.collect_or_load_stats = _own_tests_only

if __name__ == "__main__":
    from mutmut.__main__ import cli

    sys.exit(cli())

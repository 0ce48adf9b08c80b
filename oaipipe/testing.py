"""Test helpers, for oaipipe's own suite and for plugin authors: a real server, a pipeline project, fixtures.

* :func:`running_server`: the embedded OpenAI-compatible server inside tests (like httpx's
  ``MockTransport``, but real HTTP);
* :class:`PipelineProject`: a folder with a pipeline file and its data, run in-process or as the console
  script, and read back (records, journal, errors, summary), after pytest's ``pytester``;
* a pytest plugin (entry point ``pytest11``), so that ``pip install oaipipe`` gives every test suite the
  fixtures ``oaipipe_project`` and ``oaipipe_server``.

The server:

::

    from openai import OpenAI
    from oaipipe.testing import running_server

    with running_server(error_rates={429: 0.2}, seed=1) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
        client.chat.completions.create(model="gpt-6-luna", messages=[{"role": "user", "content": "hi"}])
        print(srv.stats()["by_status"])

The server listens on a free loopback port (port 0) in a background thread and is shut down on exit.
Keyword arguments are :class:`oaipipe.server.ServerConfig` and :class:`oaipipe.server.Faults` fields.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the server is imported when a test starts one: a pytest plugin loads this module
    from .server.app import OaipipeServer
    from .server.config import Faults, ServerConfig

__all__ = [
    "CliResult",
    "PipelineProject",
    "ServerHandle",
    "oaipipe_command",
    "running_server",
    "serve_forever",
    "wait_until",
]


class ServerHandle:
    """A running server: its URLs, counters and fault switches."""

    def __init__(self, server: OaipipeServer) -> None:
        self.server = server

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client, ending in ``/v1``."""
        return self.server.base_url

    @property
    def url(self) -> str:
        """The server root (no ``/v1``)."""
        return self.server.base_url.removesuffix("/v1")

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def config(self) -> ServerConfig:
        return self.server.config

    @property
    def data_dir(self) -> Any:
        return self.server.data_dir

    def stats(self) -> dict[str, Any]:
        """``{"requests", "by_path", "by_status", "injected"}`` since start or the last reset."""
        return self.server.stats()

    def settled_stats(self, **_ignored: Any) -> dict[str, Any]:
        """Same as :meth:`stats` (kept for old callers): the server counts a request before it sends the
        reply, so a client that has its answer already sees it counted."""
        return self.stats()

    def reset_stats(self) -> None:
        self.server.reset_stats()

    def set_faults(self, faults: Faults | None = None, **changes: Any) -> Faults:
        """Change faults at runtime: ``srv.set_faults(error_rates={503: 1.0})``, ``srv.set_faults(Faults())``."""
        return self.server.set_faults(faults, **changes)

    def clear_faults(self) -> Faults:
        from .server.config import Faults

        return self.server.set_faults(Faults())


@contextmanager
def running_server(config: ServerConfig | None = None, **settings: Any) -> Iterator[ServerHandle]:
    """Start the server on ``127.0.0.1`` and a free port in a daemon thread; stop it on exit."""
    from .server.app import make_server

    if config is None:
        settings.setdefault("port", 0)
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("ft_seconds", 0.2)
        settings.setdefault("batch_seconds", 0.05)
    server = make_server(config, **settings) if config is None else make_server(config)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="oaipipe-serve", daemon=True)
    thread.start()
    try:
        yield ServerHandle(server)
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def serve_forever(config: ServerConfig, *, ready: Callable[[ServerHandle], None] | None = None) -> None:
    """Serve in the current thread until Ctrl-C or SIGTERM (used by ``oaipipe serve``)."""
    from .server.app import make_server

    server = make_server(config)
    handle = ServerHandle(server)
    if ready is not None:
        ready(handle)

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# --- a pipeline project in a folder, for tests (pytest's ``pytester``, tox's ``tox_project``) -------------

#: rows of the CSV a project gets when its pipeline uses the default source (``reviews.csv``)
DEFAULT_REVIEWS: tuple[tuple[str, str], ...] = (
    ("1", "I love this mug, it is wonderful"),
    ("2", "Terrible service, the handle broke and I want a refund"),
    ("3", "The parcel arrived on Tuesday"),
    ("4", "Great value and fast delivery, thanks!"),
    ("5", "Awful. Never again."),
)

#: the pipeline :meth:`PipelineProject.write` starts from; keyword blocks replace its top-level keys
DEFAULT_PIPELINE: dict[str, Any] = {
    "name": "test",
    "backend": {"type": "local"},
    "source": {"type": "csv", "path": "reviews.csv", "id_column": "id"},
    "steps": [
        {"type": "sentiment", "analyzer": "vader", "input": "{text}", "output": "review_sentiment"},
        {"type": "ask", "system": "You are a helpful support agent.", "prompt": "Reply to: {text}",
         "output": "reply"},
    ],
    "sinks": [{"type": "jsonl", "path": "out/records.jsonl"}],
}


@dataclass
class CliResult:
    """What one ``oaipipe`` command gave: its exit code, stdout and stderr (and the summary, for a run)."""

    argv: list[str]
    exit_code: int
    out: str
    err: str

    @property
    def summary(self) -> dict[str, Any] | None:
        """The run's summary when the command printed it (``oaipipe run --json``), else ``None``."""
        text = self.out.strip()
        if not text.startswith("{"):
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def __repr__(self) -> str:
        return (f"<CliResult oaipipe {' '.join(self.argv)}: exit {self.exit_code}\n--- stdout\n{self.out}"
                f"--- stderr\n{self.err}>")


class PipelineProject:
    """A folder holding a pipeline file and the files it names: write it, run it, read what came out.

    ::

        project = PipelineProject(tmp_path)
        project.write(plugins=["shouty.py"], files={"shouty.py": PLUGIN_CODE},
                      steps=[{"type": "sentiment", "analyzer": "shouty", "input": "{text}", "output": "loud"}])
        result = project.run()               # `oaipipe run pipeline.yaml --json`, in this process
        assert result.exit_code == 0 and result.summary["records"]["failed"] == 0
        assert [r["loud"] for r in project.records()] == [...]

    The ``oaipipe_project`` pytest fixture gives one in ``tmp_path``, with ``OAIPIPE_HOME`` in a
    temporary folder and no ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` in the environment, so that nothing a
    test runs can reach the public API or the user's job registry.
    """

    def __init__(self, path: str | Path, *, filename: str = "pipeline.yaml") -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        #: the pipeline file (``pipeline.yaml`` in :attr:`path` unless ``filename`` says otherwise)
        self.file = self.path / filename

    def __repr__(self) -> str:
        return f"<PipelineProject {self.file}>"

    # --- writing ----------------------------------------------------------------------------------

    def write(self, pipeline: str | Mapping[str, Any] | None = None, files: Mapping[str, Any] | None = None,
              **blocks: Any) -> Path:
        """Write the pipeline file and ``files``; return the pipeline file's path.

        ``pipeline`` is YAML text (dedented) or a mapping (dumped as YAML). Without it the file is
        :data:`DEFAULT_PIPELINE` with ``blocks`` replacing its top-level keys (``steps=[...]``,
        ``backend={...}``, ``plugins=[...]``, ``train={...}``; a value of ``None`` drops the key); with the
        default source (``reviews.csv``), that file is written with :data:`DEFAULT_REVIEWS` unless it exists. ``files`` maps paths relative
        to the project to contents (see :meth:`write_file`).
        """
        for name, content in (files or {}).items():
            self.write_file(name, content)
        if isinstance(pipeline, str):
            if blocks:
                raise TypeError("keyword blocks apply to the default pipeline or a mapping, not to YAML text")
            text = textwrap.dedent(pipeline)
        else:
            data = copy.deepcopy(dict(pipeline if pipeline is not None else DEFAULT_PIPELINE))
            for key, value in blocks.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            if data.get("source") == DEFAULT_PIPELINE["source"] and not (self.path / "reviews.csv").exists():
                self.write_file("reviews.csv", [("id", "text"), *DEFAULT_REVIEWS])
            text = _dump_yaml(data)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.file.write_text(text, encoding="utf-8")
        return self.file

    def write_file(self, name: str | Path, content: Any) -> Path:
        """Write one file below the project (folders are created) and return its path.

        ``content`` is ``bytes`` (written as is), ``str`` (dedented), or rows: for ``.csv`` a list of
        sequences (the first is the header) or of dicts; for ``.jsonl`` a list of JSON values, one a line;
        for ``.json``, ``.yaml``/``.yml`` any JSON value.
        """
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = path.suffix.lower()
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(textwrap.dedent(content), encoding="utf-8")
        elif suffix == ".csv":
            rows = list(content)
            with path.open("w", newline="", encoding="utf-8") as fh:
                if rows and isinstance(rows[0], Mapping):
                    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
                else:
                    csv.writer(fh).writerows(rows)
        elif suffix == ".jsonl":
            path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in content), encoding="utf-8")
        elif suffix == ".json":
            path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        elif suffix in (".yaml", ".yml"):
            path.write_text(_dump_yaml(content), encoding="utf-8")
        else:
            raise TypeError(f"cannot write {type(content).__name__} to {name}: give str or bytes")
        return path

    # --- running ----------------------------------------------------------------------------------

    def cli(self, *argv: str) -> CliResult:
        """Run ``oaipipe ARGV...`` in this process (through :func:`oaipipe.cli.main`), capturing its output."""
        from .cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
        return CliResult([str(a) for a in argv], code, out.getvalue(), err.getvalue())

    def run(self, *args: str, as_json: bool = True) -> CliResult:
        """``oaipipe run PIPELINE ARGS... --json`` in this process; ``.summary`` is the run's summary.

        ``as_json=False`` leaves ``--json`` out, to see the output a user sees.
        """
        return self.cli("run", str(self.file), *self._json(args, as_json))

    def run_cli(self, *args: str, as_json: bool = True, timeout: float = 60,
                env: Mapping[str, str] | None = None) -> CliResult:
        """``oaipipe run PIPELINE ARGS... --json`` as a separate process (the console script)."""
        return self.cli_process("run", str(self.file), *self._json(args, as_json), timeout=timeout, env=env)

    def cli_process(self, *argv: str, timeout: float = 60, env: Mapping[str, str] | None = None) -> CliResult:
        """``oaipipe ARGV...`` as a separate process; ``env`` adds to (or, with ``None`` values, removes
        from) this process's environment."""
        proc = subprocess.run([*oaipipe_command(), *map(str, argv)], capture_output=True, text=True,
                              timeout=timeout, cwd=self.path, env=_environ(env))
        return CliResult([str(a) for a in argv], proc.returncode, proc.stdout, proc.stderr)

    def start_cli(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``oaipipe run PIPELINE ARGS...`` in the background (to interrupt or kill it): the caller
        waits for it. Ctrl-C (SIGINT) reaches it even when the test runner ignores it."""
        return subprocess.Popen(
            [*oaipipe_command(), "run", str(self.file), *map(str, args)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=self.path, env=_environ(env),
            preexec_fn=_default_sigint if os.name == "posix" else None,
        )

    @staticmethod
    def _json(args: tuple[str, ...], as_json: bool) -> list[str]:
        return [*args, "--json"] if as_json and "--json" not in args else list(args)

    # --- reading what a run left ------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The pipeline file as plain data (no ``${env:...}`` interpolation, no defaults); ``{}`` before
        it is written."""
        import yaml

        if not self.file.exists():
            return {}
        data = yaml.safe_load(self.file.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}

    def run_dirs(self) -> list[Path]:
        """This pipeline's run directories, oldest first."""
        root = self.path / str((self.config().get("run") or {}).get("dir") or "runs")
        mine: list[Path] = []
        others: list[Path] = []
        for meta in root.glob("*/*/pipeline.json"):
            try:
                file = json.loads(meta.read_text(encoding="utf-8")).get("file")
            except (OSError, ValueError):
                file = None
            same = file is not None and Path(file).resolve() == self.file.resolve()
            (mine if same else others).append(meta.parent)
        return sorted(mine or others, key=lambda p: p.name)

    def run_dir(self) -> Path:
        """The latest run directory (the run a rerun resumes)."""
        found = self.run_dirs()
        if not found:
            raise FileNotFoundError(f"no run directory for {self.file} yet")
        return found[-1]

    def summary(self) -> dict[str, Any]:
        """``summary.json`` of the latest run."""
        return json.loads((self.run_dir() / "summary.json").read_text(encoding="utf-8"))

    def journal(self) -> list[dict[str, Any]]:
        """The latest run's journal entries (complete lines only: a line cut short by a kill is left out)."""
        return _read_jsonl(self.run_dir() / "journal.jsonl", complete_only=True)

    def errors(self) -> list[dict[str, Any]]:
        """The latest run's ``errors.jsonl`` entries: one per failed record."""
        return _read_jsonl(self.run_dir() / "errors.jsonl", complete_only=True)

    def sink_path(self, sink: int | str = 0) -> Path:
        """The file a sink writes: ``sink`` is its index in ``sinks:``, its ``type``, or a path."""
        sinks = [s for s in (self.config().get("sinks") or []) if isinstance(s, dict)]
        if isinstance(sink, int):
            return self.path / str(sinks[sink]["path"])
        typed = [s for s in sinks if s.get("type") == sink and s.get("path")]
        if len(typed) == 1:
            return self.path / str(typed[0]["path"])
        if typed:
            raise ValueError(f"{len(typed)} sinks of type {sink!r}: name one by its index or path")
        return self.path / sink

    def records(self, sink: int | str = 0) -> list[Any]:
        """What a sink wrote: JSONL lines, CSV rows (as dicts of strings) or a JSON document's items."""
        path = self.sink_path(sink)
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return data if isinstance(data, list) else [data]
        return _read_jsonl(path)


def oaipipe_command() -> list[str]:
    """How to start the ``oaipipe`` console script of this interpreter's environment."""
    exe = Path(sys.executable).parent / ("oaipipe.exe" if os.name == "nt" else "oaipipe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "oaipipe.cli"]


def wait_until(condition: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.01,
               message: str | Callable[[], str] = "condition") -> Any:
    """Poll ``condition`` until it returns something true, and return that; ``AssertionError`` naming
    ``message`` after ``timeout`` seconds. For tests: wait on the condition itself, never sleep-then-count."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {text}")
        time.sleep(interval)


def _read_jsonl(path: Path, *, complete_only: bool = False) -> list[Any]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if complete_only and lines and not lines[-1].endswith("\n"):
        lines.pop()  # cut short by a crash: not a line yet
    return [json.loads(line) for line in lines if line.strip()]


def _dump_yaml(data: Any) -> str:
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000))


def _environ(env: Mapping[str, str | None] | None) -> dict[str, str]:
    merged = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _default_sigint() -> None:
    # a shell's background job inherits SIGINT ignored, and Python keeps it so: restore it in the child
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- the pytest plugin (entry point ``pytest11``: ``oaipipe = "oaipipe.testing"``) -------------------------


def pytest_configure(config: Any) -> None:
    """Register the fixtures (pytest is imported only here: ``oaipipe serve`` uses this module too)."""
    config.addinivalue_line(
        "markers", "oaipipe_server(**settings): settings of the oaipipe_server fixture's server "
                   "(ServerConfig / Faults fields, e.g. latency=0.05, error_rates={429: 0.2})")
    if not config.pluginmanager.has_plugin("oaipipe-fixtures"):
        config.pluginmanager.register(_fixtures(), "oaipipe-fixtures")


def _fixtures() -> Any:
    try:
        import pytest
    except ImportError as exc:  # pytest calls pytest_configure, so only a stray caller gets here
        raise ImportError("the fixtures of oaipipe.testing need pytest: pip install 'oaipipe[testing]'") from exc

    class OaipipeFixtures:
        @pytest.fixture
        def oaipipe_project(self, tmp_path: Path, tmp_path_factory: Any, monkeypatch: Any) -> PipelineProject:
            """A :class:`PipelineProject` in ``tmp_path``; ``OAIPIPE_HOME`` is a fresh folder and no OpenAI
            key or base URL is taken from the environment."""
            monkeypatch.setenv("OAIPIPE_HOME", str(tmp_path_factory.mktemp("oaipipe-home")))
            for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
                monkeypatch.delenv(name, raising=False)
            return PipelineProject(tmp_path)

        @pytest.fixture
        def oaipipe_server(self, request: Any) -> Iterator[ServerHandle]:
            """``oaipipe serve`` on a free loopback port for the test (see :func:`running_server`); settings
            come from an ``@pytest.mark.oaipipe_server(...)`` marker."""
            marker = request.node.get_closest_marker("oaipipe_server")
            settings = dict(marker.kwargs) if marker else {}
            with running_server(**settings) as srv:
                yield srv

    return OaipipeFixtures()

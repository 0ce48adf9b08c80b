"""Resuming: which run a command continues, and what makes two runs the same run.

A pipeline's runs live in ``<run.dir>/<pipeline name>/<run id>/`` (:mod:`oaipipe.rundir`); the latest
run is the one a command looks at.

The journal's rules:

* ``journal.jsonl`` gets one line per finished record (``done`` or ``failed``), appended and flushed
  *after* the sinks have the record. A record is finished when its journal line is: a resumed run skips
  the journaled records, and the sinks drop whatever they wrote for the others, so every record ends up
  exactly once in every sink after any crash, kill or Ctrl-C.
* A line cut short by a crash is cut off; a line that cannot be read is moved to ``journal.rejected``
  with a warning, and its record is processed again (:meth:`~oaipipe.rundir.RunDir.repair_journal`).
* ``pipeline.json`` holds the run's fingerprint (:func:`fingerprint`): hashes of what decides the records'
  results (:func:`fingerprint_parts`: the source, the steps, the model and its parameters, and whether
  the backend is :attr:`~oaipipe.base.Backend.offline`). *Where* calls go is not in it: an unfinished run
  may be resumed against another server or transport. Where it went is kept besides (:func:`endpoint`),
  updated when a run is resumed elsewhere (it ends there).
  A ``pipeline.json`` that cannot be read is reported as such (:func:`read_meta`: the file, the error, the
  fix; exit code 9), never taken for a changed pipeline.
* ``summary.json`` holds the status. A run is finished when it says ``finished`` (or ``nothing-to-do``);
  a run whose records are done and whose ``train:`` step is not says ``training``.

Which run a command continues (:func:`select_run`), from the latest run of the pipeline:

============================================  ==============================================  ==========
the latest run                                 the pipeline now                               mode
============================================  ==============================================  ==========
none, or ``--fresh``                           —                                              ``new``
unfinished                                     the same fingerprint                           ``resume``
unfinished                                     changed                                        refused
records done, ``train:`` step not              the same fingerprint                           ``train``
finished                                       the same fingerprint and endpoint              ``done``
finished                                       changed, or another endpoint                   ``new``
any (``--retry-failed``)                       the same fingerprint (else refused)            ``retry``
============================================  ==============================================  ==========

``resume`` skips the journaled records; ``retry`` skips the done ones (the failed ones are redone, and
the sinks drop their lines); ``train`` runs only the ``train:`` step; ``done`` makes no call at all.

The fingerprint holds the source's *settings*, not its contents: rows appended to the input of a finished
run leave it ``done`` (the guarantee: a rerun of a finished run makes no call). ``pipeline.json`` keeps the
input's size and modification time at the start (:func:`source_state`), so that ``done`` says plainly when
the input changed since, and that ``--fresh`` includes the new rows (:func:`source_change`).

The endpoint is also the response cache's namespace (:func:`backend_endpoint`): answers of one server
are never served for another.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import RunAborted, StorageError, redact
from .rundir import RunDir, find_runs, new_run_id

if TYPE_CHECKING:
    from .base import Backend
    from .pipeline import BuiltPipeline

__all__ = ["Mode", "Selection", "backend_endpoint", "changed", "endpoint", "fingerprint", "fingerprint_parts",
           "prepare_run", "read_meta", "run_meta", "select_run", "source_change", "source_state"]

Mode = Literal["new", "resume", "retry", "train", "done"]

#: backend keys that change how calls are made, not what they answer (a resumed run may change them)
_VOLATILE_BACKEND_KEYS = ("concurrency", "timeout", "max_retries", "rpm", "tpm", "api_key", "record_timeout",
                          "base_url", "type", "tier", "deadline", "tier_latency")


# --- what makes two runs the same run ------------------------------------------------------------------


def fingerprint_parts(pipeline: BuiltPipeline) -> dict[str, str]:
    """Hashes of what decides the records' results: the source, the steps, the model and its parameters.

    Sinks, run settings and *where* calls go (backend type, ``base_url``, timeouts, limits) are left out:
    an unfinished run may be resumed against another server or transport. Whether the resolved backend
    is :attr:`~oaipipe.base.Backend.offline` is in (the offline engine answers differently from a model).
    """
    from .pipeline import public_data

    data = pipeline.loaded.data
    backend = public_data(dict(data.get("backend") or {}))
    for volatile in _VOLATILE_BACKEND_KEYS:
        backend.pop(volatile, None)
    backend["engine"] = "local" if pipeline.backend.offline else "remote"
    source = dict(data.get("source") or {})
    source.pop("chunksize", None)  # how the input is read, not what it holds
    parts = {"source": source, "steps": data.get("steps"), "backend": backend}
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()[:12]
            for k, v in parts.items()}


def fingerprint(pipeline: BuiltPipeline) -> str:
    """One hash of :func:`fingerprint_parts`."""
    blob = json.dumps(fingerprint_parts(pipeline), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def backend_endpoint(backend: Backend) -> str:
    """Who answers: the server's URL (the same for ``openai``, ``requests`` and ``batch`` against one
    server), ``https://api.openai.com/v1`` for a backend that needs an OpenAI key and names no server, else
    ``backend:<name>``. The response cache's namespace: answers cached from one server (say ``oaipipe
    serve``) are never served for another (OpenAI)."""
    base_url = getattr(backend.options, "base_url", None)
    if base_url:
        return str(base_url).rstrip("/")
    return "https://api.openai.com/v1" if backend.needs_api_key else f"backend:{backend.name}"


def endpoint(pipeline: BuiltPipeline) -> str:
    """Where the pipeline's calls go (:func:`backend_endpoint`, without the URL's password: it is kept in
    ``pipeline.json``). A run finished against one server is not finished for another."""
    return redact(backend_endpoint(pipeline.backend))


def changed(meta: dict[str, Any], pipeline: BuiltPipeline) -> str:
    """Which parts of the pipeline changed since the run of ``meta`` (its ``pipeline.json``), in words."""
    old = meta.get("fingerprint_parts") or {}
    now = fingerprint_parts(pipeline)
    names = {"source": "the source", "steps": "the steps", "backend": "the model or its parameters"}
    return ", ".join(names[k] for k in now if old.get(k) != now[k]) or "the pipeline"


def run_meta(pipeline: BuiltPipeline) -> dict[str, Any]:
    """What ``pipeline.json`` of a new run holds: the pipeline as run (secrets masked), its fingerprint
    and endpoint, and what its backend declares it can do (so that readers of old runs, such as the run
    store, need not know plugin names)."""
    from .pipeline import public_config

    backend = pipeline.backend
    return {"pipeline": pipeline.name, "file": pipeline.file, "fingerprint": fingerprint(pipeline),
            "fingerprint_parts": fingerprint_parts(pipeline), "endpoint": endpoint(pipeline),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "config": public_config(pipeline),
            "source_state": source_state(pipeline),
            "backend_capabilities": {"offline": backend.offline, "priced": backend.priced,
                                     "batched": backend.batched}}


def source_state(pipeline: BuiltPipeline) -> dict[str, Any] | None:
    """What the source reads, as the file system tells it without reading it: for a source with a ``path``
    option, the file's size and modification time (a folder's: its entries and the newest modification
    time). ``None`` for a source that names no path. Kept in ``pipeline.json`` when a run starts: a rerun of
    the finished run compares it (:func:`source_change`)."""
    given = getattr(pipeline.source.options, "path", None)
    if not given or not isinstance(given, str | Path):
        return None
    path = pipeline.context.path(given)
    try:
        st = path.stat()
        if path.is_dir():
            times = [st.st_mtime_ns, *(entry.stat().st_mtime_ns for entry in path.iterdir())]
            return {"path": str(path), "entries": len(times) - 1, "mtime_ns": max(times)}
        return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return None


def source_change(meta: dict[str, Any], summary: dict[str, Any] | None, pipeline: BuiltPipeline) -> str | None:
    """A sentence saying that the source of a finished run changed since the run started (rows appended, say),
    and how to include what it holds now; ``None`` when it did not (or the run kept no state of it).

    A finished run stays finished (a rerun makes no call): its records are the input as it was. The new rows
    are processed by a new run (``--fresh``), in which the rows done before are answered from the response
    cache (when it is on), so only the new ones cost calls."""
    then = meta.get("source_state")
    now = source_state(pipeline)
    if not isinstance(then, dict) or now is None or then == now:
        return None
    shown = Path(str(now["path"])).name
    records = (summary or {}).get("records") or {}
    processed = sum(int(records.get(k) or 0) for k in ("done", "failed", "skipped"))
    count = pipeline.source.count()
    how_many = f" ({count} records now, {processed} processed by that run)" if count is not None else ""
    return (f"its source {shown} has changed since the run started{how_many}: the run did not process what "
            f"was added. To include it, run again with --fresh: a new run over the whole input, in which the "
            f"records done before are answered from the response cache (no new calls) when the cache is on")


# --- which run a command continues ---------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The run a command works on, and how (see the table in the module docstring)."""

    run: RunDir
    mode: Mode
    #: ids of the records not to process again (journaled; for ``retry`` the done ones); None for a new run
    skip: set[str] | None = None
    #: for ``done``: the source changed since that run started (:func:`source_change`), else None
    note: str | None = None


def select_run(root: Path, pipeline: BuiltPipeline, *, fresh: bool = False, retry_failed: bool = False) -> Selection:
    """The run to continue in ``root`` (the pipeline's run root), or a new one."""
    runs = find_runs(root)
    latest = runs[-1] if runs else None
    if retry_failed:
        if fresh:
            raise RunAborted("--retry-failed and --fresh contradict each other",
                             hint="--retry-failed redoes the failed records of the last run; --fresh starts a new one")
        if latest is None:
            raise RunAborted(f"--retry-failed: this pipeline has no earlier run in {root}",
                             hint="run it once without --retry-failed")
    if latest is not None and not fresh:
        selection = _continue(latest, pipeline, retry_failed=retry_failed)
        if selection is not None:
            return selection
    return Selection(RunDir(root / new_run_id()), "new")


def read_meta(run: RunDir) -> dict[str, Any]:
    """The run's ``pipeline.json``, or a :class:`StorageError` naming the file, what is wrong with it and the
    fix. Without it nothing says which pipeline the run belongs to: taking it for a changed pipeline would
    send the user undoing changes they never made."""
    path = run.meta_path
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise StorageError.from_os_error(exc, path, doing="read") from None
    except UnicodeDecodeError as exc:
        problem = f"it is not UTF-8 text (byte {exc.start + 1})"
    except ValueError as exc:
        problem = f"it is not valid JSON ({exc})"
    else:
        if isinstance(data, dict):
            return data
        problem = f"it holds a JSON {type(data).__name__}, not the run's description (an object)"
    raise StorageError(
        f"{path} cannot be read: {problem}. It says which pipeline run {run.run_id} ran, so that run cannot be "
        f"continued",
        path=path,
        hint=f"restore the file (it is written once, when the run starts), or pass --fresh to start a new run "
             f"(the old one stays in {run.path})",
    )


def _continue(latest: RunDir, pipeline: BuiltPipeline, *, retry_failed: bool) -> Selection | None:
    """How the latest run is continued, or None when a new run is started."""
    meta = read_meta(latest)
    summary = latest.summary()
    same = meta.get("fingerprint") == fingerprint(pipeline)
    status = summary.get("status") if summary is not None else None
    if retry_failed:
        if not same:
            raise RunAborted(
                f"{changed(meta, pipeline)} changed since run {latest.run_id}; --retry-failed needs the same pipeline",
                hint="undo the change, or start over with --fresh",
            )
        done = {i for i, s in latest.status_by_id().items() if s == "done"}
        return Selection(latest, "retry", done)
    if status not in ("finished", "nothing-to-do"):
        if not same:
            raise RunAborted(
                f"run {latest.run_id} of this pipeline did not finish, and {changed(meta, pipeline)} changed "
                f"since: its records would be mixed with the new ones",
                hint=f"rerun the unchanged pipeline to finish it, or pass --fresh to start a new run "
                     f"(the old one stays in {latest.path})",
            )
        if status == "training":  # its records are done; its train: step is not
            return Selection(latest, "train")
        return Selection(latest, "resume", set(latest.status_by_id()))
    here = endpoint(pipeline)
    if same and meta.get("endpoint", here) == here:
        return Selection(latest, "done", note=source_change(meta, summary, pipeline))
    return None


def prepare_run(selection: Selection, pipeline: BuiltPipeline) -> list[str]:
    """Make the selected run's directory ready to be written: a new run is created with its
    ``pipeline.json``; a continued one loses the temporary files a crash left, gets its journal repaired,
    and its endpoint updated when it is resumed against another server. Returns the warnings (unreadable
    journal lines) for the run's notes and summary."""
    run = selection.run
    if selection.mode == "new":
        run.create(run_meta(pipeline))
        return []
    run.remove_stale_temps()  # left by a crash mid-write; the run lock makes us its only writer
    warnings = run.repair_journal()  # unreadable journal lines: skipped, their records redone
    meta = run.meta()
    if meta.get("endpoint") != endpoint(pipeline):  # resumed against another server: it ends there
        meta["endpoint"] = endpoint(pipeline)
        run.create(meta)
    return warnings

"""Options shared by the commands that read the run store (``runs``, ``logs``, ``report``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["runs_location", "store_for"]


def runs_location(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--pipeline FILE`` and ``--runs-dir DIR``: where the runs are (default: the ``run.dir`` of
    ./pipeline.yaml when there is one, else ./runs)."""
    fn = click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path),
                      help="Folder holding the run directories (a pipeline's run.dir); default: the run.dir of "
                           "--pipeline, else ./runs")(fn)
    fn = click.option("--pipeline", "pipeline_file", type=click.Path(dir_okay=False, exists=True),
                      help="Pipeline file whose runs to read (default: ./pipeline.yaml when present)")(fn)
    return fn


def store_for(pipeline_file: str | None, runs_dir: Path | None) -> Any:
    """The run store of those runs, synced with the run directories; warnings go to stderr."""
    from ..store import open_store, runs_dir_for

    store = open_store(runs_dir_for(pipeline_file, runs_dir))
    for warning in store.warnings:
        click.echo(f"warning: {warning}", err=True)
    return store

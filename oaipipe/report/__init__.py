"""``oaipipe report``: one self-contained HTML file with the figures of a run, or of two runs side by side,
and of a sentiment evaluation. :func:`build_report` is the library entry point (no click here).

:mod:`.data` gathers the numbers from the run store; :mod:`.html` draws them with plotly (optional extra
``report``: ``pip install 'oaipipe[report]'``) into a page that makes no network request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..store import RunStore
from .data import RunFigures, run_figures
from .html import CHARTS, render

__all__ = ["CHARTS", "RunFigures", "build_report", "read_evaluation", "write_report"]


def read_evaluation(path: str | Path) -> dict[str, Any]:
    """The results ``oaipipe sentiment eval -o FILE`` wrote."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"evaluation file not found: {path}",
                         hint="write one with `oaipipe sentiment eval DATA ... -o eval.json`") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not an evaluation file: {exc}",
                         hint="write one with `oaipipe sentiment eval DATA ... -o eval.json`") from None
    if not isinstance(data, dict) or not isinstance(data.get("analyzers"), dict):
        raise InputError(f"{path}: not an evaluation file (no 'analyzers')",
                         hint="write one with `oaipipe sentiment eval DATA ... -o eval.json`")
    return data


def build_report(store: RunStore | None, run_ids: list[str], *, evaluation: dict[str, Any] | None = None) -> str:
    """The HTML of a report of ``run_ids`` (one, or two side by side), plus ``evaluation`` if given."""
    figures = [run_figures(store, run_id) for run_id in run_ids] if store is not None else []
    return render(figures, evaluation)


def write_report(path: str | Path, text: str) -> Path:
    """Write the report atomically (a reader never sees half a page)."""
    from ..fsutil import atomic_file

    path = Path(path)
    with atomic_file(path, "w", fsync=False) as out:
        out.fh.write(text)
    return path

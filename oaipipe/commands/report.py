"""``oaipipe report``: one self-contained HTML file with the plots of a run (or two, side by side)."""
from __future__ import annotations

import click

__all__ = ["report"]


@click.command()
def report() -> None:
    """Write an HTML report."""

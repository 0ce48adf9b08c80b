"""``oaipipe sentiment``."""
from __future__ import annotations

import click

__all__ = ["sentiment"]


@click.group()
def sentiment() -> None:
    """Sentiment analyzers."""

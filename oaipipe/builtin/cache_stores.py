"""The built-in response-cache stores: ``sqlite`` (the default, one file) and ``files`` (one JSON file per
entry, the layout of earlier versions)."""

from __future__ import annotations

from typing import Any

from ..cache import FileStore
from ..cache_sqlite import SqliteStore
from ..hookspecs import hookimpl


@hookimpl
def register_cache_stores(register: Any) -> None:
    register("sqlite", SqliteStore)
    register("files", FileStore)

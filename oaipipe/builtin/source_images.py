"""Built-in source ``images``: a folder of images, one record per file, in a stable (sorted) order.

Each record is ``{"id": relative path, "image": absolute path, "filename": name}``; the id is the path
relative to the folder (with ``/``), so it stays the same across runs and machines.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field, field_validator

from ..base import PluginOptions, Source
from ..hookspecs import hookimpl
from ..kit.sources import checked_path
from ..types import Record

DEFAULT_EXTENSIONS = ["png", "jpg", "jpeg", "gif", "webp", "bmp", "tiff", "tif"]


class ImagesSource(Source):
    """Image files in a folder (optionally its sub-folders), one record each, sorted by path."""

    class Options(PluginOptions):
        path: str = Field(..., description="Folder of images, relative to the pipeline file")
        pattern: str = Field("*", description="Glob on the file name, e.g. 'product_*'")
        extensions: list[str] = Field(
            default_factory=lambda: list(DEFAULT_EXTENSIONS),
            description="File extensions to take (case-insensitive, without the dot)",
        )
        recursive: bool = Field(False, description="Also look in sub-folders")

        @field_validator("extensions")
        @classmethod
        def _normalise(cls, value: list[str]) -> list[str]:
            return [v.lower().lstrip(".") for v in value]

    options: Options

    @property
    def folder(self) -> Path:
        return self.context.path(self.options.path)

    def _checked_folder(self) -> Path:
        return checked_path("images", self.options.path, self.context, folder=True,
                            hint="point `source.path` at the folder that holds the images")

    def _files(self) -> list[tuple[str, Path]]:
        folder = self._checked_folder()
        exts = set(self.options.extensions)
        candidates = folder.rglob("*") if self.options.recursive else folder.iterdir()
        found: list[tuple[str, Path]] = []
        for p in candidates:
            if not p.is_file() or p.name.startswith("."):
                continue
            if p.suffix.lower().lstrip(".") not in exts:
                continue
            if not fnmatch.fnmatch(p.name, self.options.pattern):
                continue
            found.append((p.relative_to(folder).as_posix(), p))
        found.sort(key=lambda item: item[0])
        return found

    def fields(self) -> list[str] | None:
        self._checked_folder()  # a missing folder is reported by `validate`, at the line of `path:`
        return ["id", "image", "filename"]

    def count(self) -> int | None:
        return len(self._files())

    def records(self) -> Iterator[Record]:
        label = self.options.path.rstrip("/")
        for rel, path in self._files():
            yield Record(
                id=rel,
                data={"id": rel, "image": str(path.resolve()), "filename": path.name},
                where=f"{label}/{rel}",
            )


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("images", ImagesSource)

"""Built-in source and sink ``hf-dataset``: Hugging Face ``datasets`` saved on disk
(``Dataset.save_to_disk`` / ``datasets.load_from_disk``; ``pip install 'oaipipe[hf]'``).

Source: ``{type: hf-dataset, path: data/reviews_ds, split: train, id_column: id}`` reads a saved
``Dataset`` (or one split of a saved ``DatasetDict``) a batch at a time from its memory-mapped Arrow files:
nothing is loaded whole, nothing is downloaded. Values keep their types (an ``Image`` column arrives as
its stored ``{bytes, path}``).

Sink: ``{type: hf-dataset, path: out/records_ds}`` writes the enriched records as a dataset folder that
``datasets.load_from_disk`` opens, ``_id`` and ``_run`` columns first; see :mod:`oaipipe.kit.columnar` for how it
survives a kill. The folder is replaced whole on close (written beside it, then swapped in).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..base import PluginOptions, Source
from ..errors import InputError
from ..extras import require
from ..hookspecs import hookimpl
from ..kit.columnar import ColumnarSink
from ..kit.sinks import MODE_FIELD_DOC, refused_output
from ..kit.sources import check_columns, checked_path, numbered, records_of_batches, wanted_columns
from ..types import Record, RunInfo

__all__ = ["HfDatasetSink", "HfDatasetSource"]

_SAVING = ".saving"


class HfDatasetSource(Source):
    """Rows of a Hugging Face dataset saved with ``save_to_disk``, read a batch at a time."""

    class Options(PluginOptions):
        path: str = Field(..., description="Folder written by Dataset.save_to_disk, relative to the pipeline file")
        split: str | None = Field(None, description="Split of a saved DatasetDict (e.g. train)")
        id_column: str | None = Field(None, description="Column holding a unique, stable id; without it "
                                                        "ids are row-1, row-2, ...")
        columns: list[str] | None = Field(None, description="Keep only these columns (default: all)")
        batch_size: int = Field(1024, ge=1, description="Rows read at a time")

    options: Options

    def _dataset(self) -> Any:
        datasets = require("datasets", extra="hf", feature="the hf-dataset source")
        path = checked_path("Hugging Face dataset", self.options.path, self.context, folder=True,
                            hint="point `source.path` at the folder Dataset.save_to_disk wrote")
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - datasets raises several kinds for a folder that is not one
            raise InputError(f"{self.options.path}: not a dataset saved with save_to_disk: {exc}",
                             hint="save it with `Dataset.save_to_disk(PATH)` (load_dataset's cache folders are "
                                  "not read)") from None
        if isinstance(loaded, datasets.DatasetDict):
            splits = list(loaded)
            split = self.options.split or (splits[0] if len(splits) == 1 else None)
            if split not in loaded:
                raise InputError(f"{self.options.path} holds a DatasetDict: "
                                 + (f"it has no split '{self.options.split}'" if self.options.split
                                    else "say which split to read"),
                                 hint=f"set `split:` to one of: {', '.join(splits)}")
            return loaded[split]
        if self.options.split:
            raise InputError(f"{self.options.path} holds one Dataset, not a DatasetDict: `split:` does not apply",
                             hint="remove `split:`")
        return loaded

    def fields(self) -> list[str] | None:
        names = list(self._dataset().column_names)
        check_columns(self.options.path, names, self.options.id_column, self.options.columns)
        return wanted_columns(self.options.id_column, self.options.columns) or names

    def count(self) -> int | None:
        return int(self._dataset().num_rows)

    def records(self) -> Iterator[Record]:
        ds = self._dataset()
        opts = self.options
        check_columns(opts.path, list(ds.column_names), opts.id_column, opts.columns)
        wanted = wanted_columns(opts.id_column, opts.columns)
        if wanted is not None:
            ds = ds.select_columns(wanted)
        batches = (table.to_pylist() for table in ds.with_format("arrow").iter(batch_size=opts.batch_size))
        yield from records_of_batches(numbered(batches), label=opts.path, id_column=opts.id_column)


class HfDatasetSink(ColumnarSink):
    """Enriched records as a Hugging Face dataset folder (``load_from_disk``), written on close."""

    kind = "hf-dataset sink"
    extra = "hf"

    class Options(PluginOptions):
        path: str = Field("out/records_dataset", description="Output folder, relative to the pipeline file")
        mode: Literal["overwrite", "append"] = Field("overwrite", description=MODE_FIELD_DOC)
        include_failed: bool = Field(False, description="Also write failed records, with an '_error' column")

    options: Options

    def open(self, run: RunInfo, done_ids: set[str] | None = None) -> None:
        require("datasets", extra="hf", feature="the hf-dataset sink")
        out = self.file
        if out.exists() and not out.is_dir():
            raise refused_output(out, f"{out} is a file; the hf-dataset sink writes a folder",
                                 fix="point `path:` at a folder (or a name not taken), or move the file away, then "
                                     "rerun the same command")
        for leftover in out.parent.glob(f".{out.name}.*{_SAVING}") if out.parent.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True)  # a save cut short by a crash (we hold the output lock)
        super().open(run, done_ids)

    def materialize(self, schema: Any, batches: Iterator[Any]) -> None:
        datasets = require("datasets", extra="hf", feature="the hf-dataset sink")
        pa = require("pyarrow", extra="hf", feature="the hf-dataset sink")
        ds_table = require("datasets.table", extra="hf", feature="the hf-dataset sink")

        out = self.file
        out.parent.mkdir(parents=True, exist_ok=True)
        work = out.parent / f".{out.name}.{secrets.token_hex(4)}{_SAVING}"
        work.mkdir()
        try:
            arrow = work / "rows.arrow"
            with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for table in batches:
                    writer.write_table(table)
            dataset = datasets.Dataset(ds_table.MemoryMappedTable.from_file(str(arrow)))
            saved = work / "dataset"
            quiet = datasets.is_progress_bar_enabled()
            if quiet:
                datasets.disable_progress_bars()  # oaipipe has its own progress output
            try:
                dataset.save_to_disk(str(saved))
            finally:
                if quiet:
                    datasets.enable_progress_bars()
            del dataset
            _swap_in(saved, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _swap_in(new: Path, out: Path) -> None:
    """Put the folder ``new`` at ``out``, replacing what was there (renamed aside first, then removed)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old{_SAVING}"
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("hf-dataset", HfDatasetSource)


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("hf-dataset", HfDatasetSink)

"""Built-in source and sink ``parquet`` (Apache Parquet through pyarrow: ``pip install 'oaipipe[parquet]'``).

Source: ``{type: parquet, path: data.parquet, id_column: id, columns: [...], batch_size: 1024}`` reads
the file one record batch at a time (memory stays flat whatever its size); values keep their types
(ints, floats, booleans, timestamps, lists, structs). ``count()`` comes from the file's footer. A row with
an empty or duplicate id fails alone, naming its row.

Sink: ``{type: parquet, path: out/records.parquet, mode: overwrite}`` writes the enriched records, with
``_id`` and ``_run`` columns first, the record's fields after them; see :mod:`oaipipe.kit.columnar` for how it
survives a kill (a row log next to the file, turned into Parquet on close).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from ..base import PluginOptions
from ..errors import InputError
from ..extras import require
from ..fsutil import atomic_file
from ..hookspecs import hookimpl
from ..kit.columnar import ColumnarSink
from ..kit.sinks import MODE_FIELD_DOC
from ..kit.sources import FileSource, check_columns, numbered, records_of_batches, wanted_columns
from ..types import Record

__all__ = ["ParquetSink", "ParquetSource"]


class ParquetSource(FileSource):
    """Rows of a Parquet file, read a record batch at a time, with their types."""

    kind = "Parquet"
    wrong_kind_hint = "point `source.path` at a .parquet file"

    class Options(PluginOptions):
        path: str = Field(..., description="Parquet file, relative to the pipeline file")
        id_column: str | None = Field(None, description="Column holding a unique, stable id; without it "
                                                        "ids are row-1, row-2, ...")
        columns: list[str] | None = Field(None, description="Keep only these columns (default: all)")
        batch_size: int = Field(1024, ge=1, description="Rows read at a time")

    options: Options

    def _file(self) -> Any:
        pq = require("pyarrow.parquet", extra="parquet", feature="the parquet source")
        path = self._check_exists()
        try:
            return pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a file that is not Parquet
            raise InputError(f"{self.options.path}: not a readable Parquet file: {exc}",
                             hint="check the file (`python -c \"import pyarrow.parquet as pq; "
                                  "print(pq.read_schema('FILE'))\"`)") from None

    def fields(self) -> list[str] | None:
        names = list(self._file().schema_arrow.names)
        check_columns(self.options.path, names, self.options.id_column, self.options.columns)
        return wanted_columns(self.options.id_column, self.options.columns) or names

    def count(self) -> int | None:
        return int(self._file().metadata.num_rows)

    def records(self) -> Iterator[Record]:
        pf = self._file()
        opts = self.options
        check_columns(opts.path, list(pf.schema_arrow.names), opts.id_column, opts.columns)
        batches = (b.to_pylist() for b in pf.iter_batches(batch_size=opts.batch_size,
                                                           columns=wanted_columns(opts.id_column, opts.columns)))
        try:
            yield from records_of_batches(numbered(batches), label=opts.path, id_column=opts.id_column)
        except OSError as exc:
            raise self._read_error(exc) from None


class ParquetSink(ColumnarSink):
    """Enriched records as a Parquet file (``_id``, ``_run``, then the fields), written on close."""

    kind = "parquet sink"
    extra = "parquet"

    class Options(PluginOptions):
        path: str = Field("out/records.parquet", description="Output .parquet file, relative to the pipeline file")
        mode: Literal["overwrite", "append"] = Field("overwrite", description=MODE_FIELD_DOC)
        include_failed: bool = Field(False, description="Also write failed records, with an '_error' column")
        compression: str = Field("zstd", description="Parquet compression: zstd, snappy, gzip, none")

    options: Options

    def materialize(self, schema: Any, batches: Iterator[Any]) -> None:
        pq = require("pyarrow.parquet", extra="parquet", feature="the parquet sink")
        compression = None if self.options.compression == "none" else self.options.compression
        with atomic_file(self.file, "wb") as out:
            writer = pq.ParquetWriter(out.fh, schema, compression=compression)
            try:
                for table in batches:
                    writer.write_table(table)
            finally:
                writer.close()
            out.fh.flush()
            os.fsync(out.fh.fileno())


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("parquet", ParquetSource)


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("parquet", ParquetSink)

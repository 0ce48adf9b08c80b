"""Built-in source ``excel``: the rows of one sheet of an .xlsx workbook (openpyxl in read-only mode,
``pip install 'oaipipe[excel]'``).

``{type: excel, path: reviews.xlsx, sheet: Reviews, id_column: id}``: the first non-empty row (or
``header_row``) names the columns; each later non-empty row is a record. Rows stream from the file (read-only
mode never holds the whole sheet); values keep Excel's types (numbers, dates, booleans, text); a formula
gives the value Excel last computed and saved. A row with an empty or duplicate id fails alone, naming its
sheet and row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import Field

from ..base import PluginOptions
from ..errors import InputError
from ..extras import require
from ..hookspecs import hookimpl
from ..kit.sources import FileSource, check_columns, records_of_batches, wanted_columns
from ..types import Record

__all__ = ["ExcelSource"]


class ExcelSource(FileSource):
    """Rows of one sheet of an .xlsx workbook, streamed, with their types."""

    kind = "Excel"
    wrong_kind_hint = "point `source.path` at an .xlsx file"

    class Options(PluginOptions):
        path: str = Field(..., description=".xlsx workbook, relative to the pipeline file")
        sheet: str | None = Field(None, description="Sheet name (default: the first sheet)")
        header_row: int | None = Field(None, ge=1, description="Row number of the header (default: the first "
                                                               "non-empty row)")
        id_column: str | None = Field(None, description="Column holding a unique, stable id; without it "
                                                        "ids are row-1, row-2, ...")
        columns: list[str] | None = Field(None, description="Keep only these columns (default: all)")

    options: Options

    def _book(self) -> Any:
        openpyxl = require("openpyxl", extra="excel", feature="the excel source")
        path = self._check_exists()
        try:
            return openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:  # noqa: BLE001 - zipfile / openpyxl errors for a file that is not a workbook
            raise InputError(f"{self.options.path}: not a readable .xlsx workbook: {type(exc).__name__}: {exc}",
                             hint="save it as .xlsx (Excel 2007+); .xls and .csv are other formats") from None

    def _sheet(self, book: Any) -> Any:
        name = self.options.sheet
        if name is None:
            return book.worksheets[0]
        if name not in book.sheetnames:
            from ..kit.sources import did_you_mean

            raise InputError(f"{self.options.path}: no sheet '{name}'{did_you_mean(name, book.sheetnames)}",
                             hint=f"sheets: {', '.join(book.sheetnames)}")
        return book[name]

    def _rows(self) -> Iterator[tuple[int, list[str], tuple[Any, ...]]]:
        """(row number, header, values) of each data row; the header first as (n, header, ())."""
        book = self._book()
        try:
            ws = self._sheet(book)
            header: list[str] | None = None
            for number, values in enumerate(ws.iter_rows(values_only=True), start=1):
                if header is None:
                    wanted = self.options.header_row
                    if (wanted is not None and number < wanted) or (wanted is None and all(v is None for v in values)):
                        continue
                    header = _names(values)
                    yield number, header, ()
                    continue
                if all(v is None or v == "" for v in values):
                    continue
                yield number, header, values
        finally:
            book.close()

    @property
    def _label(self) -> str:
        return self.options.path + (f" sheet '{self.options.sheet}'" if self.options.sheet else "")

    def fields(self) -> list[str] | None:
        for _, header, _values in self._rows():
            check_columns(self._label, header, self.options.id_column, self.options.columns)
            return wanted_columns(self.options.id_column, self.options.columns) or header
        return None

    def records(self) -> Iterator[Record]:
        opts = self.options

        def rows() -> Iterator[tuple[int, dict[str, Any]]]:
            wanted: list[str] = []
            for number, header, values in self._rows():
                if not values:
                    check_columns(self._label, header, opts.id_column, opts.columns)
                    wanted = wanted_columns(opts.id_column, opts.columns) or header
                    continue
                row = dict(zip(header, list(values) + [None] * (len(header) - len(values)), strict=False))
                yield number, {k: row.get(k) for k in wanted}

        yield from records_of_batches(rows(), label=self._label, id_column=opts.id_column)


def _names(values: tuple[Any, ...]) -> list[str]:
    """Column names of a header row: text as is, empty cells ``Unnamed: N``, repeats ``a.1``."""
    names: list[str] = []
    for i, value in enumerate(values):
        base = str(value).strip() if value not in (None, "") else f"Unnamed: {i}"
        name, k = base, 0
        while name in names:
            k += 1
            name = f"{base}.{k}"
        names.append(name)
    while names and names[-1].startswith("Unnamed: "):
        names.pop()  # trailing empty header cells (formatting only)
    return names


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("excel", ExcelSource)

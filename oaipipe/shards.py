"""Shards: one pipeline as N independent runs (``oaipipe run --shard I/N``), and ``oaipipe merge``.

For users with a batch scheduler (Slurm arrays, Kubernetes indexed jobs): shard ``I`` of ``N`` (``I`` from
0 to N-1) processes the records whose id hashes to ``I`` (:func:`shard_of`: BLAKE2b of the id, the same on
every machine and Python version). Each shard is its own run: its run directory is
``<run.dir>/<name>.shard-I-of-N/`` and each sink file ``out.jsonl`` becomes ``out.shard-I-of-N.jsonl``,
so shards never share a file, and each resumes like any run.

``oaipipe merge PIPELINE`` reads the source once more (ids only matter) and writes each sink file by
taking, for each input record in order, that record's line from its shard's file: the merged file is in
input order. It refuses shards of different N (their partitions overlap), a missing or unfinished shard,
and a line that is not where its shard puts it (a record in two shards, or one not in the input), naming
them. Sinks whose files are ``.jsonl`` (``_id``) or ``.csv`` (``record_id`` column) can be merged.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, RunAborted

if TYPE_CHECKING:
    from .pipeline import BuiltPipeline
    from .types import Record

__all__ = ["apply_shard", "in_shard", "merge_shards", "parse_shard", "shard_of", "shard_suffix"]

_SHARD_DIR = re.compile(r"\.shard-(\d+)-of-(\d+)$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)``, with 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise ValueError(f"{text!r} is not I/N (e.g. --shard 0/4: the first of 4 shards, numbered 0 to 3)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f"{text!r}: shard numbers run from 0 to N-1 (e.g. 0/{max(count, 1)} .. "
                         f"{max(count, 1) - 1}/{max(count, 1)})")
    return index, count


def shard_of(record_id: str, count: int) -> int:
    """The shard (0..count-1) of a record id: a stable hash, the same on every machine."""
    digest = hashlib.blake2b(str(record_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def in_shard(records: Iterable[Record], shard: tuple[int, int]) -> Iterator[Record]:
    index, count = shard
    return (record for record in records if shard_of(record.id, count) == index)


def shard_suffix(shard: tuple[int, int]) -> str:
    return f"shard-{shard[0]}-of-{shard[1]}"


def shard_file(path: Path, shard: tuple[int, int]) -> Path:
    """``out.jsonl`` → ``out.shard-I-of-N.jsonl``."""
    return path.with_name(f"{path.stem}.{shard_suffix(shard)}{path.suffix}")


def apply_shard(pipeline: BuiltPipeline, shard: tuple[int, int], root_name: str) -> str:
    """Point each file sink of ``pipeline`` at its shard's file; return the shard's run root name."""
    for sink in pipeline.sinks:
        options = getattr(sink, "options", None)
        path = getattr(options, "path", None)
        if path:
            options.path = str(shard_file(Path(path), shard))  # type: ignore[union-attr]
    return f"{root_name}.{shard_suffix(shard)}"


# --- merge --------------------------------------------------------------------------------------------


@dataclass
class _ShardFile:
    """The lines of one shard's sink file, read one ahead: (record id, line)."""

    path: Path
    rows: Iterator[tuple[str, Any]]
    head: tuple[str, Any] | None = None

    def advance(self) -> None:
        self.head = next(self.rows, None)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} line {n}: not JSON ({exc.msg})",
                                 hint="rerun that shard's command to repair it (it resumes)") from None
            yield str(obj.get("_id")), line if line.endswith("\n") else line + "\n"


def _csv_rows(path: Path, header: list[list[str]]) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        head = next(reader, None)
        if head is None:
            return
        if header and header[0] != head:
            raise InputError(f"{path}: its columns differ from the first shard's ({', '.join(header[0])})",
                             hint="set the csv sink's `columns:` so that every shard writes the same columns")
        if not header:
            header.append(head)
        if "record_id" not in head:
            raise InputError(f"{path}: no record_id column", hint="merge reads the csv sink's own files")
        at = head.index("record_id")
        for row in reader:
            yield row[at], row


def _merge_file(pipeline: BuiltPipeline, target: Path, count: int) -> int:
    """Merge the shard files of one sink file into ``target``; return the number of lines written."""
    kind = target.suffix.lower()
    if kind not in (".jsonl", ".csv"):
        raise InputError(f"merge cannot combine {target.name}: only .jsonl and .csv sink files are merged",
                         hint="use a jsonl or csv sink for sharded runs, or combine this sink's files yourself")
    header: list[list[str]] = []
    files = []
    for index in range(count):
        path = shard_file(target, (index, count))
        if not path.exists():
            raise InputError(f"shard {index}/{count} wrote no {path.name} (expected {path})",
                             hint=f"run `oaipipe run {pipeline.file} --shard {index}/{count}`")
        rows = _jsonl_rows(path) if kind == ".jsonl" else _csv_rows(path, header)
        files.append(_ShardFile(path, rows))
        files[-1].advance()
    written = 0
    tmp = target.with_name(f".{target.name}.merge.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out) if kind == ".csv" else None
        if writer is not None and header:
            writer.writerow(header[0])
        for record in pipeline.source.records():
            shard = files[shard_of(record.id, count)]
            if shard.head is not None and shard.head[0] == str(record.id):
                if writer is not None:
                    writer.writerow(shard.head[1])
                else:
                    out.write(shard.head[1])
                written += 1
                shard.advance()
        for index, shard in enumerate(files):
            if shard.head is not None:
                tmp.unlink()
                raise RunAborted(
                    f"{shard.path} (shard {index}/{count}) holds record {shard.head[0]} out of place: it is not "
                    f"an input record of that shard, or appears twice (shards overlap)",
                    hint="rerun that shard with --fresh, then merge again")
    os.replace(tmp, target)
    return written


def find_shards(pipeline: BuiltPipeline) -> dict[tuple[int, int], Path]:
    """The shard run roots of ``pipeline``: (I, N) → run root."""
    from .runner import _safe_name

    runs_dir = pipeline.context.path(pipeline.loaded.config.run.dir)
    prefix = _safe_name(pipeline.name) + "."
    found: dict[tuple[int, int], Path] = {}
    if runs_dir.is_dir():
        for path in sorted(runs_dir.iterdir()):
            match = _SHARD_DIR.search(path.name)
            if path.is_dir() and path.name.startswith(prefix) and match and \
                    path.name == prefix + match.group(0)[1:]:
                found[(int(match.group(1)), int(match.group(2)))] = path
    return found


def merge_shards(pipeline: BuiltPipeline) -> dict[str, Any]:
    """Check the shard runs of ``pipeline`` and merge each sink file; return what was done."""
    from .rundir import find_runs

    shards = find_shards(pipeline)
    if not shards:
        raise RunAborted(f"no shard runs of pipeline {pipeline.name} in {pipeline.loaded.config.run.dir}/",
                         hint=f"run `oaipipe run {pipeline.file} --shard I/N` for each I from 0 to N-1 first")
    counts = sorted({n for _, n in shards})
    if len(counts) > 1:
        names = ", ".join(p.name for p in shards.values())
        raise RunAborted(f"shard runs of different partitions overlap ({' and '.join(f'N={n}' for n in counts)}): "
                         f"{names}", hint="remove the run directories of the partition you do not want, "
                                         "then merge again")
    count = counts[0]
    missing = [f"{i}/{count}" for i in range(count) if (i, count) not in shards]
    unfinished = []
    for (index, n), root in sorted(shards.items()):
        runs = find_runs(root)
        status = (runs[-1].summary() or {}).get("status") if runs else None
        if status not in ("finished", "nothing-to-do"):
            unfinished.append(f"{index}/{n} ({status or 'no run'})")
    if missing or unfinished:
        parts = ([f"missing shard(s) {', '.join(missing)}"] if missing else []) + \
                ([f"unfinished shard(s) {', '.join(unfinished)}"] if unfinished else [])
        first = (missing or [u.split()[0] for u in unfinished])[0]
        raise RunAborted(f"cannot merge {pipeline.name}: {'; '.join(parts)}",
                         hint=f"run `oaipipe run {pipeline.file} --shard {first}` (it resumes), then merge again")
    outputs = []
    for sink in pipeline.sinks:
        path = getattr(getattr(sink, "options", None), "path", None)
        if path:
            target = pipeline.context.path(path)
            outputs.append({"sink": sink.name, "path": str(target), "records": _merge_file(pipeline, target, count)})
    return {"pipeline": pipeline.name, "shards": count, "outputs": outputs}

"""A run's training dataset in the formats other trainers take (``oaipipe dataset export``).

The exchanges are the ones a run's ``train:`` block trains on: the run's ``journal.jsonl``, filtered by
the ``train.select`` / ``train.step`` recorded in the run's ``pipeline.json`` (``all_exchanges=True`` or
``select=`` / ``step=`` override them), de-duplicated as :func:`~oaipipe.training.build_rows` does, in the
journal's order (the input's order). Each format is one :class:`ExportFormat` in :data:`FORMATS`:

=================  ======================================================================================
``hf-jsonl``       ``{"messages": [{"role", "content"}, ...]}`` per line: the conversational
                   language-modeling shape of Hugging Face TRL (``SFTTrainer``), ``datasets.load_dataset
                   ("json", ...)``
``hf-parquet``     the same rows as Parquet (column ``messages``: list of ``{role, content}`` structs)
``dpo-jsonl``      ``{"prompt": [messages], "chosen": [assistant], "rejected": [assistant]}``: TRL's
                   conversational preference shape (``DPOTrainer``)
``dpo-parquet``    the same pairs as Parquet
``openai-jsonl``   OpenAI's fine-tuning JSONL, as ``dataset build`` writes it (``train.method``:
                   ``{"messages"}`` rows, or OpenAI's DPO rows)
=================  ======================================================================================

**Where preference pairs come from.** With ``chosen_step`` / ``rejected_step`` (``--chosen STEP --rejected
STEP``): in each record, the reply of one step is chosen and the reply of the other rejected; both must
answer the same last user message, and the prompt is the chosen step's (system included). Without them:
the rule of ``dataset build --format dpo``: replies to the same prompt, one labelled as the selection's
first key says (default ``sentiment: positive``), one with the opposite label. Nothing to pair is a
:class:`~oaipipe.errors.DatasetError` that says which rule found nothing and how to give pairs.

Every row is checked against its format's shape before anything is written; the file is written through
a temp file and renamed into place, and never over one of the run's own files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DatasetError
from ..extras import require
from ..fsutil import atomic_file, same_file
from .build import _norm, _prompt_messages, _reply
from .launch import _step_matches, build_dataset
from .sources import Example, matches_select, read_examples
from .validate import ParseError

__all__ = ["FORMATS", "ExportFormat", "ExportResult", "export_run", "run_train_settings"]

TRL_FORMATS_URL = "https://huggingface.co/docs/trl/dataset_formats"
OPENAI_FT_URL = "https://platform.openai.com/docs/guides/supervised-fine-tuning"


@dataclass(frozen=True)
class ExportFormat:
    """One export format: what the rows are (``sft``, ``dpo``, ``openai``) and the file they go in."""

    name: str
    rows: str
    container: str
    description: str
    #: the third-party documentation of the shape
    source: str

    @property
    def text(self) -> bool:
        """Whether the file is one stream of text lines (it can go to standard output: ``-o -``)."""
        return self.container in TEXT_CONTAINERS


#: the containers whose file is text lines (Parquet is binary, and written through a seekable file)
TEXT_CONTAINERS = frozenset({"jsonl"})

FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("hf-jsonl", "sft", "jsonl", "{messages} JSONL (TRL SFTTrainer, datasets' json loader)", TRL_FORMATS_URL),
    ExportFormat("hf-parquet", "sft", "parquet", "{messages} Parquet (TRL SFTTrainer, datasets' parquet loader)",
                 TRL_FORMATS_URL),
    ExportFormat("dpo-jsonl", "dpo", "jsonl", "{prompt, chosen, rejected} JSONL (TRL DPOTrainer)", TRL_FORMATS_URL),
    ExportFormat("dpo-parquet", "dpo", "parquet", "{prompt, chosen, rejected} Parquet (TRL DPOTrainer)",
                 TRL_FORMATS_URL),
    ExportFormat("openai-jsonl", "openai", "jsonl", "OpenAI's fine-tuning JSONL (train.method decides SFT or DPO)",
                 OPENAI_FT_URL),
)}

#: files a run directory holds (and the ``train:`` step writes there): never an export's target
RUN_FILES = ("journal.jsonl", "errors.jsonl", "summary.json", "pipeline.json", "journal.rejected",
             "train.jsonl", "train.validation.jsonl", "run.lock")


@dataclass
class ExportResult:
    """What :func:`export_run` wrote."""

    path: Path
    format: str
    rows: int
    run_dir: Path
    select: dict[str, Any]
    step: str | None
    pairing: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    #: the run's ``summary.json`` status (None: no summary yet: the run is still going, or was killed)
    run_status: str | None = None

    @property
    def run_complete(self) -> bool:
        """Whether every record of the run is done (else the export holds only those finished so far)."""
        return self.run_status in COMPLETE_STATUSES

    def to_dict(self) -> dict[str, Any]:
        fmt = FORMATS[self.format]
        return {"path": str(self.path), "format": self.format, "rows": self.rows, "run": self.run_dir.name,
                "run_dir": str(self.run_dir), "select": self.select, "step": self.step, "pairing": self.pairing,
                "shape_source": fmt.source, "stats": self.stats, "run_status": self.run_status,
                "run_complete": self.run_complete}


#: summary statuses of a run whose records are all done (``training``: only its train: step is left)
COMPLETE_STATUSES = frozenset({"finished", "nothing-to-do", "training"})


def run_status(run_dir: Path) -> str | None:
    """The status in the run's ``summary.json``; None when it has none (running, or killed)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    status = summary.get("status") if isinstance(summary, dict) else None
    return status if isinstance(status, str) else None


def run_train_settings(run_dir: Path) -> dict[str, Any]:
    """The ``train:`` block the run was made with (from its ``pipeline.json``; ``{}`` when it had none)."""
    try:
        meta = json.loads((run_dir / "pipeline.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    config = meta.get("config") if isinstance(meta, dict) else None
    train = config.get("train") if isinstance(config, dict) else None
    return dict(train) if isinstance(train, dict) else {}


def check_target(out: Path, run_dir: Path) -> None:
    """Refuse an output that would overwrite one of the run's own files (or is a folder), or a file the run
    read or wrote: its pipeline file, its source, its sinks' outputs, the run index (``runs.db``)."""
    target = out.resolve()
    if target.is_dir():
        raise DatasetError(f"{out} is a folder; the export writes one file",
                           hint=f"name a file, e.g. {out / 'train.jsonl'}")
    folder = target.parent  # this run's folder, or another run's (of any pipeline)
    is_run = folder == run_dir.resolve() or (folder / "pipeline.json").is_file() or (folder / "journal.jsonl").is_file()
    if is_run and (target.name in RUN_FILES or target.exists()):
        raise DatasetError(f"{out} is a file of run {folder.name}: the export does not overwrite it",
                           hint="write the export elsewhere, e.g. -o export/train.jsonl")
    for what, path in _run_inputs_and_outputs(run_dir):
        if same_file(out, path):
            raise DatasetError(f"{out} is {what} of run {run_dir.name}: the export does not overwrite it",
                               hint="write the export elsewhere, e.g. -o export/train.jsonl")


def _run_inputs_and_outputs(run_dir: Path) -> list[tuple[str, Path]]:
    """The files the run in ``run_dir`` read or wrote outside its folder, as its ``pipeline.json`` records them."""
    index = run_dir.resolve().parent.parent / "runs.db"
    found: list[tuple[str, Path]] = [("the run index", index)]
    found += [("the run index", index.with_name(f"runs.db{end}")) for end in ("-wal", "-shm", "-journal")]
    try:
        meta = json.loads((run_dir / "pipeline.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return found
    if not isinstance(meta, dict):
        return found
    pipeline_file = meta.get("file")
    base = Path(pipeline_file).parent if isinstance(pipeline_file, str) and pipeline_file else run_dir
    if isinstance(pipeline_file, str) and pipeline_file:
        found.append(("the pipeline file", Path(pipeline_file)))
    state = meta.get("source_state")
    if isinstance(state, dict) and isinstance(state.get("path"), str):
        found.append(("the source", Path(state["path"])))
    config = meta.get("config")
    if not isinstance(config, dict):
        return found
    source = config.get("source")
    if isinstance(source, dict) and isinstance(source.get("path"), str) and source["path"]:
        found.append(("the source", _under(base, source["path"])))
    sinks = config.get("sinks")
    for i, sink in enumerate(sinks if isinstance(sinks, list) else []):
        if isinstance(sink, dict) and isinstance(sink.get("path"), str) and sink["path"]:
            found.append((f"the output of sink {i} ({sink.get('type')})", _under(base, sink["path"])))
    return found


def _under(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


# --- rows ---------------------------------------------------------------------------------------------


def _chat(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": str(m.get("role")), "content": m.get("content")} for m in messages]


def _sft_rows(rows: list[Any]) -> list[dict[str, Any]]:
    return [{"messages": _chat(row["messages"])} for row in rows]


def _openai_to_trl(row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": _chat(row["input"]["messages"]), "chosen": _chat(row["preferred_output"]),
            "rejected": _chat(row["non_preferred_output"])}


def _step_pairs(examples: list[Example], chosen: str, rejected: str,
                stats: dict[str, int]) -> list[dict[str, Any]]:
    """In each record, the reply of step ``chosen`` over the reply of step ``rejected`` (same user message)."""
    records: dict[str, dict[str, Example]] = {}
    for ex in examples:
        side = "chosen" if _step_matches(ex, chosen) else "rejected" if _step_matches(ex, rejected) else None
        if side is not None and ex.raw is None:
            records.setdefault(str(ex.fields.get("record_id", ex.where)), {}).setdefault(side, ex)
    rows: list[dict[str, Any]] = []
    for pair in records.values():
        good, bad = pair.get("chosen"), pair.get("rejected")
        if good is None or bad is None:
            stats["not_pairable"] = stats.get("not_pairable", 0) + 1
            continue
        user = [_norm(m.get("content")) for m in _prompt_messages(good) if m.get("role") == "user"][-1:]
        if user != [_norm(m.get("content")) for m in _prompt_messages(bad) if m.get("role") == "user"][-1:]:
            stats["prompt_differs"] = stats.get("prompt_differs", 0) + 1
            continue
        if _norm(_reply(good)) == _norm(_reply(bad)):
            stats["same_reply"] = stats.get("same_reply", 0) + 1
            continue
        rows.append({"prompt": _chat(_prompt_messages(good)),
                     "chosen": [{"role": "assistant", "content": _reply(good)}],
                     "rejected": [{"role": "assistant", "content": _reply(bad)}]})
    return rows


def _check_messages(value: Any, where: str, *, last_role: str | None) -> None:
    ok = (isinstance(value, list) and value
          and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                  and m["content"].strip() for m in value))
    if not ok:
        raise DatasetError(f"{where}: not a non-empty list of {{role, content}} messages with text content",
                           hint="exchanges with images or empty replies cannot be exported; pick another step "
                                "with --step")
    if last_role is not None and value[-1]["role"] != last_role:
        raise DatasetError(f"{where}: the last message is from {value[-1]['role']}, not {last_role}",
                           hint="export exchanges that end with the model's reply")


def check_rows(rows: list[dict[str, Any]], kind: str) -> None:
    """Every row has its format's shape (``sft``: messages ending with the reply; ``dpo``: prompt/chosen/
    rejected); a :class:`DatasetError` names the row otherwise."""
    for i, row in enumerate(rows, start=1):
        where = f"row {i}"
        if kind == "sft":
            _check_messages(row.get("messages"), f"{where} messages", last_role="assistant")
        elif kind == "dpo":
            _check_messages(row.get("prompt"), f"{where} prompt", last_role="user")
            _check_messages(row.get("chosen"), f"{where} chosen", last_role="assistant")
            _check_messages(row.get("rejected"), f"{where} rejected", last_role="assistant")


# --- writing ------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_file(path) as out:
        for row in rows:
            out.fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _message_list(pa: Any) -> Any:
    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def _write_parquet(path: Path, rows: list[dict[str, Any]], kind: str) -> None:
    pa = require("pyarrow", extra="parquet", feature=f"the {kind} Parquet export")
    pq = require("pyarrow.parquet", extra="parquet", feature=f"the {kind} Parquet export")
    columns = ["messages"] if kind == "sft" else ["prompt", "chosen", "rejected"]
    schema = pa.schema([(c, _message_list(pa)) for c in columns])
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_file(path, "wb") as out:
        pq.write_table(table, out.fh, compression="zstd")
        out.fh.flush()
        os.fsync(out.fh.fileno())


WRITERS: dict[str, Callable[[Path, list[dict[str, Any]], str], None]] = {
    "jsonl": lambda path, rows, _kind: _write_jsonl(path, rows),
    "parquet": _write_parquet,
}


# --- the export ---------------------------------------------------------------------------------------


_COUNTED = {"not_selected": "not selected", "skipped_non_text": "with images", "duplicates": "duplicate(s)",
            "not_pairable": "without a partner", "prompt_differs": "answering different user messages",
            "same_reply": "with the same reply on both sides"}


def _nothing_selected(run_dir: Path, select: dict[str, Any], given: bool, step: str | None,
                      stats: dict[str, int]) -> DatasetError:
    read = stats.get("read", 0)
    if not select and not step:  # nothing was filtered out: --all (or no train.select) and still no row
        images = stats.get("skipped_non_text", 0)
        why = (f"{images} of them send images, which are not trained on" if images else
               "no record of it finished with an exchange (see its errors.jsonl)")
        return DatasetError(f"run {run_dir.name}: none of its {read} exchange(s) can be exported: {why}",
                            hint="finish the run (rerun the same `oaipipe run` command; `oaipipe logs` says why "
                                 "records failed), or export another run (`oaipipe runs` lists them)")
    where = f"{'--select' if given else 'train.select'} {select}" + (f" and step {step!r}" if step else "")
    return DatasetError(f"run {run_dir.name}: none of its {read} exchange(s) matches {where}",
                        hint="export every exchange with --all, or choose others with --select KEY=VALUE / --step")


def _nothing_paired(run_dir: Path, pairing: str, step: str | None, stats: dict[str, int]) -> DatasetError:
    counts = ", ".join(f"{stats[k]} {words}" for k, words in _COUNTED.items() if stats.get(k))
    only = f", exchanges of step {step!r} only (--step ask: every ask step's)" if step else ""
    return DatasetError(
        f"run {run_dir.name}: nothing to pair for DPO ({pairing}{only}){': ' + counts if counts else ''}",
        hint="name two steps that reply to the same prompt with --chosen STEP --rejected STEP, or pair by a label "
             "with --select (e.g. --select sentiment=positive: a positive and a negative reply to the same prompt)")


def _step_pair_rows(journal: Path, select: dict[str, Any], chosen: str,
                    rejected: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Pairs of two named steps' replies (their exchanges are used even when the steps send images: the
    text check refuses an image placeholder)."""
    examples = [ex for ex in read_examples(journal) if ex.raw is None]
    kept = [ex for ex in examples if matches_select(ex, select)]
    stats = {"read": len(examples), "not_selected": len(examples) - len(kept)}
    return _step_pairs(kept, chosen, rejected, stats), stats


def _rows(spec: ExportFormat, journal: Path, select: dict[str, Any], step: str | None, train: dict[str, Any],
          pair: tuple[str, str] | None, host: Any) -> tuple[list[dict[str, Any]], dict[str, int], str | None]:
    """The rows of ``spec`` (checked), the build's counts, and how DPO pairs were made."""
    if spec.rows == "dpo" and pair is not None:
        rows, stats = _step_pair_rows(journal, select, pair[0], pair[1])
        check_rows(rows, "dpo")
        return rows, stats, f"step {pair[0]} over step {pair[1]} in each record"
    method = "dpo" if spec.rows == "dpo" else "supervised"
    if spec.rows == "openai":
        method = str(train.get("method") or "supervised")
    result = build_dataset(journal, method=method, select=select, step=step, host=host)
    built = [row for row in result.train if not isinstance(row, ParseError)]
    pairing = None
    if method == "dpo":
        key, wanted = next(iter(select.items())) if select else ("sentiment", "positive")
        pairing = f"{key}={wanted} over the opposite label, same prompt"
        trl = [_openai_to_trl(row) for row in built]
        check_rows(trl, "dpo")
        rows = built if spec.rows == "openai" else trl
    else:
        rows = built if spec.rows == "openai" else _sft_rows(built)
        check_rows(_sft_rows(built), "sft")
    return rows, result.stats, pairing


def export_run(run_dir: str | Path, fmt: str, out: str | Path, *, select: dict[str, Any] | None = None,
               all_exchanges: bool = False, step: str | None = None, chosen_step: str | None = None,
               rejected_step: str | None = None, host: Any = None) -> ExportResult:
    """Write the training dataset of the run in ``run_dir`` to ``out`` in format ``fmt`` (see :data:`FORMATS`).

    ``select`` / ``step`` default to the run's ``train.select`` / ``train.step``; ``all_exchanges`` drops the
    selection (every exchange of every finished record). ``chosen_step`` and ``rejected_step`` pair two
    steps' replies for the DPO formats."""
    spec = FORMATS.get(fmt)
    if spec is None:
        raise ConfigError(f"unknown export format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")
    if bool(chosen_step) != bool(rejected_step):
        raise ConfigError("--chosen and --rejected go together", hint="name both steps, e.g. --chosen reply "
                                                                       "--rejected draft")
    if chosen_step and spec.rows != "dpo":
        raise ConfigError(f"--chosen/--rejected pair replies for DPO; format {fmt} has no pairs",
                          hint="use --format dpo-jsonl or dpo-parquet")
    if all_exchanges and select:
        raise ConfigError("--all and --select contradict each other", hint="drop one of them")
    run_dir, out = Path(run_dir), Path(out)
    journal = _journal(run_dir)
    check_target(out, run_dir)
    train = run_train_settings(run_dir)
    wanted: dict[str, Any] = {} if all_exchanges else dict(select if select else train.get("select") or {})
    step = step or (None if all_exchanges else train.get("step"))
    pair = (chosen_step, rejected_step) if chosen_step and rejected_step else None
    rows, stats, pairing = _rows(spec, journal, wanted, step, train, pair, host)
    if not rows:
        if pairing is not None:
            raise _nothing_paired(run_dir, pairing, None if pair else step, stats)
        raise _nothing_selected(run_dir, wanted, bool(select), step, stats)
    WRITERS[spec.container](out, rows, spec.rows)
    return ExportResult(path=out, format=fmt, rows=len(rows), run_dir=run_dir, select=wanted, step=step,
                        pairing=pairing, stats=stats, run_status=run_status(run_dir))


def _journal(run_dir: Path) -> Path:
    journal = run_dir / "journal.jsonl"
    if not journal.is_file():
        raise DatasetError(f"{run_dir}: no journal.jsonl: not a run directory, or the run recorded nothing yet",
                           hint="name a run (`oaipipe runs` lists them) or the folder of one")
    return journal

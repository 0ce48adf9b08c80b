"""``oaipipe dataset build`` and ``dataset validate``: fine-tuning datasets (OpenAI's chat JSONL / DPO format).

Thin over :mod:`oaipipe.training`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ..errors import DatasetError, ExitCode
from ..models_table import DEFAULT_FINE_TUNE_MODEL
from ..models_table import FINE_TUNE_DEFAULT_WHY as FT_MODEL_WHY
from .common import STDOUT, build_options, echo_json, json_option, output_path, refuse_stdout, stdout_output

__all__ = ["build", "dataset", "validate"]


@click.group()
def dataset() -> None:
    """Build and validate fine-tuning datasets (OpenAI's chat JSONL / DPO format)."""


def _print_build(result: Any, files: Any, report: Any, output: str) -> None:
    err = output == STDOUT  # the dataset is on stdout: the messages go to stderr
    shown = "standard output" if err else output
    s = result.stats
    click.echo(f"read {s.get('read', 0)} example(s); kept {len(result.train)} for training"
               + (f", {len(result.validation)} for validation" if result.validation else "")
               + f" ({s.get('duplicates', 0)} duplicate(s), {s.get('not_selected', 0)} not selected"
               + (f", {s['not_pairable']} without a pair" if s.get("not_pairable") else "")
               + (f", {s['skipped_non_text']} with images skipped" if s.get("skipped_non_text") else "")
               + ")", err=err)
    if files is not None:
        click.echo(f"wrote {shown if err else files.train_path}"
                   + (f" and {files.validation_path}" if files.validation_path else ""), err=err)
    click.echo(report.to_text(), err=err)
    if files is None:
        click.echo(f"nothing written to {shown}: the dataset is not ready (see the errors above)", err=err)


#: a run's records and state: never the output of `dataset build` (train.jsonl is: the train: step writes it)
_RUN_STATE = ("journal.jsonl", "errors.jsonl", "summary.json", "pipeline.json", "journal.rejected", "run.lock")


def _refuse_overwriting(data: str, output: str) -> None:
    """``-o`` must not be DATA itself (a CSV, a journal: the input would be replaced by the dataset) nor a
    run's own records."""

    out, source = Path(output), Path(data)
    same = out.resolve() == source.resolve()
    if not same and source.is_file() and out.exists():
        try:
            same = os.path.samefile(out, source)
        except OSError:
            same = False
    folder = out.resolve().parent
    if same or (out.name in _RUN_STATE and ((folder / "journal.jsonl").is_file() or (folder / "pipeline.json").is_file())):
        what = "DATA, the input it reads" if same else f"a file of run {folder.name}"
        raise DatasetError(f"-o {output} is {what}: the dataset is never written over it",
                           hint="write the dataset elsewhere, e.g. -o train.jsonl")


@dataset.command("build")
@click.argument("data", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Training JSONL to write (a validation split goes to OUT.validation.jsonl; -: standard output, "
                   "without a split)")
@click.option("--format", "fmt", type=click.Choice(["sft", "dpo"]), default="sft", show_default=True,
              help="sft: {messages}; dpo: {input, preferred_output, non_preferred_output}")
@build_options
@click.option("--model", default=DEFAULT_FINE_TUNE_MODEL, show_default=True,
              help="Base model the report counts tokens, limits and prices for; " + FT_MODEL_WHY)
@json_option()
def build(data: str, output: str, fmt: str, select: tuple[str, ...], system: str | None, step: str | None,
          validation_fraction: float, seed: int, model: str, as_json: bool) -> ExitCode:
    """Build a fine-tuning dataset from DATA (dialogue log, run records, CSV, JSONL or a folder)."""
    from ..training import build_dataset, parse_select, report_for, write_dataset

    if stdout_output(output, as_json) and validation_fraction:
        refuse_stdout(output, why="a validation split is a second file (OUT.validation.jsonl)",
                      fix="give -o train.jsonl, or drop --validation-fraction")
    if output != STDOUT:
        _refuse_overwriting(data, output)
    method = "dpo" if fmt == "dpo" else "supervised"
    result = build_dataset(data, method=method, select=parse_select(select), system=system,
                           validation_fraction=validation_fraction, seed=seed, step=step)
    report = report_for(result, model=model, source=output)
    # a dataset that is not ready is not written (no empty or half-usable file to train on by mistake)
    files = None
    if report.ok:
        with output_path(output, suffix=".jsonl") as path:
            files = write_dataset(result, path)
    if as_json:
        dataset_info = ({**files.to_dict(), "written": True} if files is not None else
                        {"train_path": output, "written": False, "n_train": len(result.train),
                         "n_validation": len(result.validation)})
        echo_json({"dataset": dataset_info, "build": result.stats, "report": report.to_dict()})
    else:
        _print_build(result, files, report, output)
    return ExitCode.OK if report.ok else ExitCode.DATASET_ERROR


@dataset.command("validate")
@click.argument("file", type=click.Path())
@click.option("--method", type=click.Choice(["supervised", "dpo"]), default=None,
              help="Default: detected from the rows")
@click.option("--model", default=DEFAULT_FINE_TUNE_MODEL, show_default=True,
              help="Base model (tokenizer, limit, price); " + FT_MODEL_WHY)
@click.option("--max-tokens-per-example", type=int, default=None, help="Override the model's example limit")
@click.option("--n-epochs", type=int, default=None, help="Epochs for the estimate (default: OpenAI's rule)")
@click.option("--min-examples", type=int, default=10, show_default=True)
@json_option()
def validate(file: str, method: str | None, model: str, max_tokens_per_example: int | None,
             n_epochs: int | None, min_examples: int, as_json: bool) -> ExitCode:
    """Check a fine-tuning JSONL file the way OpenAI's data-preparation guide does; exit 6 if not ready."""
    from ..training import validate_file

    report = validate_file(file, method=method, model=model, token_limit=max_tokens_per_example,
                           n_epochs=n_epochs, min_examples=min_examples)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.to_text())
    return ExitCode.OK if report.ok else ExitCode.DATASET_ERROR

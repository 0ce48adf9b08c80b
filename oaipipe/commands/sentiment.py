"""``oaipipe sentiment``: score texts with an analyzer (``sentiment score``, or ``sentiment TEXT``), and
measure analyzers on labelled data (``sentiment eval``)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .common import stdout_output

__all__ = ["evaluate_command", "score", "sentiment"]


class _ScoreByDefault(click.Group):
    """``oaipipe sentiment TEXT`` means ``oaipipe sentiment score TEXT``."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and args[0] not in self.commands and (args[0] == "-" or not args[0].startswith("-")):
            args = ["score", *args]
        return super().resolve_command(ctx, args)


@click.group(cls=_ScoreByDefault, invoke_without_command=True)
@click.pass_context
def sentiment(ctx: click.Context) -> None:
    """Score texts with a sentiment analyzer, or evaluate analyzers on labelled data.

    \b
    oaipipe sentiment "I love it"                  (= sentiment score; texts on stdin, one a line, too)
    echo "I love it" | oaipipe sentiment           (the lines of stdin, with vader)
    oaipipe sentiment eval DATA --label-column gold --analyzer vader --analyzer keyword
    """
    if ctx.invoked_subcommand is not None:
        return
    if sys.stdin.isatty():
        click.echo(ctx.get_help())
        return
    ctx.invoke(score)  # texts piped in, one a line


def _analyzer_spec(value: str) -> str | dict[str, Any]:
    """``vader`` or a YAML mapping ``{type: vader, positive_threshold: 0.3}``."""
    if value.lstrip().startswith("{"):
        import yaml

        spec = yaml.safe_load(value)
        if not isinstance(spec, dict) or "type" not in spec:
            raise click.BadParameter(f"{value!r}: a mapping needs `type:`", param_hint="--analyzer")
        return spec
    return value


def _context(pipeline_file: str | None, plugins: tuple[str, ...]) -> tuple[Any, Any]:
    """(plugin host, pipeline or None): the pipeline's plugins and backend when there is a pipeline file
    (--pipeline, else ./pipeline.yaml), plus the --plugin files."""
    from ..pipeline import load_pipeline
    from ..plugins import PluginHost

    candidate = pipeline_file or ("pipeline.yaml" if Path("pipeline.yaml").is_file() else None)
    pipeline = load_pipeline(candidate) if candidate else None
    host = pipeline.host if pipeline is not None else PluginHost()
    for item in plugins:
        host.load(str(Path(item).resolve()) if item.endswith(".py") else item)
    host.check_pending()
    return host, pipeline


_pipeline_option = click.option(
    "--pipeline", "pipeline_file", type=click.Path(dir_okay=False, exists=True),
    help="Pipeline whose plugins and backend to use (default: ./pipeline.yaml when present); the llm analyzer "
         "asks its backend, through its cache")
_plugin_option = click.option("--plugin", "plugins", multiple=True, metavar="FILE.py|MODULE",
                              help="Load this plugin (an analyzer of your own); repeatable")


@sentiment.command()
@click.argument("texts", nargs=-1)
@click.option("-a", "--analyzer", default="vader", show_default=True,
              help="Analyzer name, or a YAML mapping {type: NAME, ...options}")
@_pipeline_option
@_plugin_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text")
def score(texts: tuple[str, ...], analyzer: str, pipeline_file: str | None, plugins: tuple[str, ...],
          as_json: bool) -> None:
    """Score TEXTS (or the lines of stdin, with none or `-`) with one analyzer."""
    from ..evaluate import Labelled, evaluate

    host, pipeline = _context(pipeline_file, plugins)
    built = host.analyzer(_analyzer_spec(analyzer))
    items = list(texts) if texts and texts != ("-",) else [line.rstrip("\n") for line in sys.stdin]
    data = Labelled(ids=[str(i) for i in range(len(items))], texts=items, gold=["neutral"] * len(items))
    result = asyncio.run(evaluate(data, {analyzer: built}, pipeline=pipeline))["analyzers"][analyzer]
    for text, label, value, error in zip(items, result["predictions"], result["scores"],
                                         _errors(result, len(items)), strict=True):
        if as_json:
            click.echo(json.dumps({"text": text, "label": label, "score": value, "analyzer": built.name,
                                   **({"error": error} if error else {})}, ensure_ascii=False))
        elif label is None:
            click.echo(f"error\t\t{text}\t{error}")
        else:
            click.echo(f"{label}\t{value:+.4f}\t{text}")


def _errors(result: dict[str, Any], n: int) -> list[str]:
    """The error of each text (``""`` if scored), from the examples kept by evaluate()."""
    by_id = {e.split(": ", 1)[0]: e.split(": ", 1)[1] for e in result.get("error_examples", [])}
    return [by_id.get(str(i), "" if result["predictions"][i] is not None else "failed") for i in range(n)]


@sentiment.command("eval")
@click.argument("data", type=click.Path(exists=True))
@click.option("--label-column", default="label", show_default=True, help="Column with the gold label")
@click.option("--text-column", default="text", show_default=True, help="Column with the text")
@click.option("-a", "--analyzer", "analyzers", multiple=True,
              help="Analyzer to evaluate (repeatable; default: vader and keyword); a name or {type: NAME, ...}")
@click.option("--label-map", "label_map", multiple=True, metavar="VALUE=LABEL",
              help="Read a gold value as a label, e.g. --label-map pos=positive --label-map 0=neutral")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N labelled texts")
@_pipeline_option
@_plugin_option
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Also write the results as JSON (for `oaipipe report --eval FILE`; -: standard output, as --json)")
def evaluate_command(data: str, label_column: str, text_column: str, analyzers: tuple[str, ...],
                     label_map: tuple[str, ...], limit: int | None, pipeline_file: str | None,
                     plugins: tuple[str, ...], as_json: bool, output: str | None) -> None:
    """Evaluate analyzers on labelled DATA (.csv, .jsonl, .parquet, .xlsx or a saved dataset folder):
    accuracy, precision/recall per class, macro and weighted F1, confusion matrix."""
    from ..evaluate import evaluate, read_labelled

    if stdout_output(output):  # the JSON on standard output: what --json prints (so --json with it is fine)
        output, as_json = None, True
    mapping: dict[str, str] = {}
    for item in label_map:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: write VALUE=LABEL", param_hint="--label-map")
        mapping[key.strip()] = value.strip()
    host, pipeline = _context(pipeline_file, plugins)
    labelled = read_labelled(data, text_column=text_column, label_column=label_column, host=host,
                             label_map=mapping, limit=limit)
    specs = [_analyzer_spec(a) for a in analyzers or ("vader", "keyword")]
    built: dict[str, Any] = {}
    for spec in specs:
        name = spec if isinstance(spec, str) else str(spec["type"])
        while name in built:
            name += "'"
        built[name] = host.analyzer(spec)
    concurrency = int(getattr(pipeline.backend.options, "concurrency", 8) or 8) if pipeline else 8
    result = asyncio.run(evaluate(labelled, built, pipeline=pipeline, concurrency=concurrency))
    result["data"] = str(data)
    result["label_column"] = label_column
    if output:
        Path(output).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    _print_table(result)
    if output:
        click.echo(f"\nwrote {output} (add it to a report: oaipipe report --eval {output})")


def _print_table(result: dict[str, Any]) -> None:
    click.echo(f"{result['data']}: {result['n']} labelled texts (gold: column '{result['label_column']}'; "
               + ", ".join(f"{label} {result['gold'].count(label)}" for label in result["labels"]) + ")")
    for skipped in result["skipped"][:5]:
        click.echo(f"  skipped: {skipped}")
    click.echo()
    rows = [("analyzer", "accuracy", "macro F1", "weighted F1", "errors", "calls", "cost")]
    for name, r in result["analyzers"].items():
        calls = r.get("calls")
        rows.append((name, f"{r.get('accuracy', 0):.3f}", f"{r.get('macro_f1', 0):.3f}",
                     f"{r.get('weighted_f1', 0):.3f}", str(r["errors"]),
                     f"{calls['calls']} ({calls['cached']} cached)" if calls else "-",
                     f"${calls['cost_usd']:.4f}" if calls else "-"))
    _table(rows)
    for name, r in result["analyzers"].items():
        if not r.get("n"):
            continue
        click.echo(f"\n{name}:")
        labels = r["confusion"]["labels"]
        per = [("class", "precision", "recall", "F1", "support")] + [
            (label, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"]))
            for label, c in r["per_class"].items()]
        _table(per, indent="  ")
        click.echo("  confusion (rows: gold, columns: predicted):")
        _table([("", *labels)] + [(label, *map(str, row)) for label, row in zip(labels, r["confusion"]["matrix"],
                                                                                 strict=True)], indent="    ")
        for example in r.get("error_examples", []):
            click.echo(f"  error: {example}")


def _table(rows: Sequence[tuple[str, ...]], indent: str = "") -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                      for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())

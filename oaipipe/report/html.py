"""The report as one self-contained HTML file: plotly figures, the plotly.js library inlined once, no
request to anywhere (no CDN, no web font, no image): it opens on a machine without a network.

Why plotly (see docs/results.md): its figures are interactive (hover shows the exact count, latency or
dollar figure; zoom into a histogram; click a legend to hide a run), the library is pure Python with its
JavaScript shipped inside the wheel (``include_plotlyjs`` inlines it), and it draws SVG in any browser.
The cost is the size: about 4.8 MB of JavaScript per report, compressed well by any archive.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from ..extras import require
from .data import LABELS, RunFigures

__all__ = ["CHARTS", "render"]

COLORS = {"positive": "#2e7d32", "neutral": "#9e9e9e", "negative": "#c62828"}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]

#: (key, title, what it shows) of every chart of a run, in page order
CHARTS: list[tuple[str, str, str]] = [
    ("sentiment", "Sentiment per sentiment step", "labels written by each step that uses an analyzer"),
    ("input_vs_reply", "Sentiment of the input vs the reply",
     "exchanges by the sentiment of what was sent (rows) and of what came back (columns)"),
    ("latency", "Latency of calls", "seconds per call that was not answered from the cache"),
    ("throughput", "Throughput over time", "records finished per second"),
    ("tokens", "Tokens per step and model", "prompt and completion tokens billed"),
    ("cost", "Dollars per step and model", "from the price table of the run"),
    ("cache", "Cache hits per step", "calls answered from the response cache vs sent"),
    ("retries", "Retries by cause", "HTTP status, timeout or connection of every retried attempt"),
    ("errors", "Failed records by error class", "the exception class of each failed record"),
]


def _go() -> Any:
    return require("plotly.graph_objects", extra="report", feature="oaipipe report")


def _layout(fig: Any, **extra: Any) -> Any:
    extra.setdefault("height", 340)
    fig.update_layout(template="plotly_white", margin={"l": 56, "r": 16, "t": 24, "b": 56},
                      legend={"orientation": "h", "y": -0.2}, font={"family": "system-ui, sans-serif", "size": 12},
                      **extra)
    return fig


def _empty(message: str) -> Any:
    """A drawn figure that says there is nothing to show (and why), instead of a blank."""
    fig = _go().Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14, "color": "#666"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig)


def _sentiment(f: RunFigures) -> Any:
    if not f.sentiments:
        return _empty("no sentiment step in this run")
    go = _go()
    fields = list(f.sentiments)
    names = [f"{name} ({f.sentiments[name][0]})" for name in fields]
    fig = go.Figure([go.Bar(name=label, x=names, y=[f.sentiments[n][1].get(label, 0) for n in fields],
                            marker_color=COLORS[label]) for label in LABELS])
    return _layout(fig, barmode="group", yaxis_title="records")


def _input_vs_reply(f: RunFigures) -> Any:
    if not f.input_vs_reply:
        return _empty("no exchange has a sentiment on both sides")
    go = _go()
    z = [[f.input_vs_reply.get((i, r), 0) for r in LABELS] for i in LABELS]
    fig = go.Figure(go.Heatmap(z=z, x=[f"reply {r}" for r in LABELS], y=[f"input {i}" for i in LABELS],
                               colorscale="Blues", text=z, texttemplate="%{text}", showscale=False,
                               hovertemplate="%{y} → %{x}: %{z} exchanges<extra></extra>"))
    return _layout(fig, yaxis={"autorange": "reversed"})


def _latency(f: RunFigures) -> Any:
    edges, counts = f.latency
    if not counts:
        return _empty("no call was sent (none, or all answered from the cache)")
    go = _go()
    mids = [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    width = edges[1] - edges[0] if len(edges) > 1 else 1
    fig = go.Figure(go.Bar(x=mids, y=counts, width=[width] * len(mids), marker_color=PALETTE[0],
                           hovertemplate="%{x:.3f} s: %{y} calls<extra></extra>"))
    return _layout(fig, xaxis_title=f"seconds ({f.latency_calls} calls)", yaxis_title="calls", bargap=0.02)


def _throughput(f: RunFigures) -> Any:
    stamps, rates = f.throughput
    if not stamps:
        return _empty("no finishing times (runs made before oaipipe recorded them)")
    go = _go()
    fig = go.Figure(go.Scatter(x=stamps, y=rates, mode="lines+markers", line={"shape": "hv", "color": PALETTE[2]},
                               hovertemplate="%{x}: %{y:.2f} records/s<extra></extra>"))
    return _layout(fig, yaxis_title="records / s", xaxis_title="time (UTC)")


def _step_names(f: RunFigures) -> list[str]:
    return [f"{r.get('step')}<br>{r.get('model')}" for r in f.by_step]


def _tokens(f: RunFigures) -> Any:
    if not f.by_step:
        return _empty("no call was made")
    go = _go()
    names = _step_names(f)
    fig = go.Figure([
        go.Bar(name="prompt", x=names, y=[r.get("prompt_tokens") or 0 for r in f.by_step], marker_color=PALETTE[0]),
        go.Bar(name="completion", x=names, y=[r.get("completion_tokens") or 0 for r in f.by_step],
               marker_color=PALETTE[1])])
    return _layout(fig, barmode="stack", yaxis_title="tokens")


def _cost(f: RunFigures) -> Any:
    if not f.by_step:
        return _empty("no call was made")
    go = _go()
    costs = [float(r.get("cost_usd") or 0) for r in f.by_step]
    fig = go.Figure(go.Bar(x=_step_names(f), y=costs, marker_color=PALETTE[3], text=[f"${c:.4f}" for c in costs],
                           textposition="auto", hovertemplate="%{x}: $%{y:.6f}<extra></extra>"))
    _layout(fig, yaxis_title="USD")
    if not any(costs):
        fig.add_annotation(text="all $0: the local engine, cached answers or unpriced models", showarrow=False,
                           x=0.5, y=1.0, xref="paper", yref="paper", font={"color": "#666"})
    return fig


def _cache(f: RunFigures) -> Any:
    if not f.cache:
        return _empty("no call was made")
    go = _go()
    steps = list(f.cache)
    fig = go.Figure([
        go.Bar(name="from the cache", x=steps, y=[f.cache[s][0] for s in steps], marker_color=PALETTE[2]),
        go.Bar(name="sent", x=steps, y=[f.cache[s][1] for s in steps], marker_color=PALETTE[0])])
    return _layout(fig, barmode="stack", yaxis_title="calls")


def _retries(f: RunFigures) -> Any:
    if not f.retries:
        attempts = f" ({f.attempts} attempts)" if f.attempts is not None else ""
        return _empty(f"no retry{attempts}" if f.attempts is not None or f.run.get("summary")
                      else "no retry counts in this run's summary")
    go = _go()
    causes = sorted(f.retries, key=lambda k: -f.retries[k])
    fig = go.Figure(go.Bar(x=causes, y=[f.retries[c] for c in causes], marker_color=PALETTE[1]))
    return _layout(fig, xaxis_title="cause", xaxis_type="category", yaxis_title="retries")


def _errors(f: RunFigures) -> Any:
    if not f.errors:
        return _empty("no record failed")
    go = _go()
    classes = list(f.errors)
    fig = go.Figure(go.Bar(x=classes, y=[f.errors[c] for c in classes], marker_color=COLORS["negative"]))
    return _layout(fig, yaxis_title="records")


BUILDERS: dict[str, Callable[[RunFigures], Any]] = {
    "sentiment": _sentiment, "input_vs_reply": _input_vs_reply, "latency": _latency,
    "throughput": _throughput, "tokens": _tokens, "cost": _cost, "cache": _cache, "retries": _retries,
    "errors": _errors,
}


# --- evaluation figures ---------------------------------------------------------------------------------


def _eval_metrics(result: dict[str, Any]) -> Any:
    go = _go()
    names = list(result["analyzers"])
    metrics = [("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("weighted_f1", "weighted F1")]
    fig = go.Figure([go.Bar(name=label, x=names, y=[result["analyzers"][n].get(key, 0) for n in names],
                            marker_color=PALETTE[i], text=[f"{result['analyzers'][n].get(key, 0):.2f}" for n in names],
                            textposition="auto") for i, (key, label) in enumerate(metrics)])
    return _layout(fig, barmode="group", yaxis={"range": [0, 1], "title": "score"})


def _eval_confusion(name: str, r: dict[str, Any]) -> Any:
    if not r.get("n"):
        return _empty(f"{name} scored no text")
    go = _go()
    labels, matrix = r["confusion"]["labels"], r["confusion"]["matrix"]
    fig = go.Figure(go.Heatmap(z=matrix, x=[f"predicted {x}" for x in labels], y=[f"gold {x}" for x in labels],
                               colorscale="Greens", text=matrix, texttemplate="%{text}", showscale=False,
                               hovertemplate="%{y}, %{x}: %{z}<extra></extra>"))
    return _layout(fig, yaxis={"autorange": "reversed"}, height=300)


# --- the page ---------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1f2937;color:#fff;padding:16px 28px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cbd5e1;font-size:13px}
main{padding:12px 28px 40px}section{margin-top:22px}h2{font-size:16px;margin:0 0 2px}
.what{color:#666;font-size:12px;margin:0 0 8px}
.row{display:grid;gap:14px;grid-template-columns:repeat(var(--cols),minmax(0,1fr))}
.cell{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:8px;min-width:0}
.cell h3{font-size:12px;color:#555;margin:0 0 4px;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{background:#f3f4f6;border-radius:6px;padding:6px 10px;font-size:12px}
.card b{display:block;font-size:16px}table{border-collapse:collapse;width:100%;font-size:12px}
th,td{border-bottom:1px solid #e5e7eb;padding:4px 6px;text-align:left;vertical-align:top}
td.err{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
.chart{height:340px}
.grid2{display:grid;gap:0 18px;grid-template-columns:repeat(2,minmax(0,1fr))}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
"""


def _cards(f: RunFigures) -> str:
    run = f.run
    summary = run.get("summary") or {}
    tokens = summary.get("tokens") or {}
    items = [("status", run.get("status") or "-"), ("records done", run.get("records_done")),
             ("records failed", run.get("records_failed")), ("calls", summary.get("calls", "-")),
             ("cached", summary.get("cached", "-")), ("tokens", tokens.get("total", "-")),
             ("cost", f"${float(summary.get('cost_usd') or 0):.4f}"),
             ("elapsed", f"{float(summary.get('elapsed_s') or 0):.1f} s"),
             ("backend", f"{run.get('backend') or '-'} · {run.get('model') or '-'}")]
    return '<div class="cards">' + "".join(
        f'<div class="card">{html.escape(str(k))}<b>{html.escape(str(v))}</b></div>' for k, v in items) + "</div>"


def _failed_table(f: RunFigures) -> str:
    if not f.failed:
        return "<p class='what'>no record failed</p>"
    rows = "".join(f"<tr><td>{html.escape(str(r['id']))}</td><td>{html.escape(str(r['location'] or ''))}</td>"
                   f"<td>{html.escape(str(r['error_class'] or ''))}</td>"
                   f"<td class='err'>{html.escape(str(r['error'] or ''))}</td></tr>" for r in f.failed)
    more = (f"<p class='what'>the first {len(f.failed)} of {f.failed_total}; all of them: "
            f"<code>oaipipe logs --failed</code> or errors.jsonl</p>" if f.failed_total > len(f.failed) else "")
    return (f"<table data-table='failed'><tr><th>record</th><th>where</th><th>class</th><th>reason</th></tr>"
            f"{rows}</table>{more}")


def _figure_html(fig: Any, key: str, run_id: str) -> str:
    body = fig.to_html(full_html=False, include_plotlyjs=False, default_width="100%", default_height="340px",
                       config={"displaylogo": False, "responsive": True,
                               "modeBarButtonsToRemove": ["select2d", "lasso2d", "sendDataToCloud"]})
    return f'<div class="chart" data-chart="{html.escape(key)}" data-run="{html.escape(run_id)}">{body}</div>'


def _section(title: str, what: str, cells: list[tuple[str, str]]) -> str:
    inner = "".join(f'<div class="cell">{f"<h3>{html.escape(head)}</h3>" if head else ""}{body}</div>'
                    for head, body in cells)
    return (f"<section><h2>{html.escape(title)}</h2><p class='what'>{html.escape(what)}</p>"
            f'<div class="row" style="--cols:{len(cells)}">{inner}</div></section>')


def render(runs: list[RunFigures], evaluation: dict[str, Any] | None = None) -> str:
    """The HTML page of one run, or of two side by side (``--compare``), with an evaluation section when
    ``evaluation`` (the JSON of ``oaipipe sentiment eval -o``) is given."""
    offline = require("plotly.offline", extra="report", feature="oaipipe report")
    ids = [f.run["run_id"] for f in runs]
    heads = [f"{f.run['pipeline']} · run {f.run['run_id']}" for f in runs]
    sections = []
    if runs:
        sections.append(_section("Summary", "counts of the run (tokens and dollars: its last invocation, as "
                                 "summary.json)", [(h, _cards(f)) for h, f in zip(heads, runs, strict=True)]))
    charts = []
    for key, title, what in CHARTS:
        cells = [(h if len(runs) > 1 else "", _figure_html(BUILDERS[key](f), key, f.run["run_id"]))
                 for h, f in zip(heads, runs, strict=True)]
        charts.append(_section(title, what, cells))
    # one run: two charts a row; two runs: each chart of both runs side by side
    sections.append(f'<div class="grid2">{"".join(charts)}</div>' if len(runs) == 1 else "".join(charts))
    if runs:
        sections.append(_section("Failed records", "each failed record with its reason",
                                 [(h, _failed_table(f)) for h, f in zip(heads, runs, strict=True)]))
    if evaluation:
        sections.append(_evaluation(evaluation))
    title = "oaipipe report: " + " vs ".join(ids) if ids else "oaipipe report"
    subtitle = " · ".join(heads) or html.escape(str((evaluation or {}).get("data", "")))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; script-src 'unsafe-inline' "
            f"'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style>"
            f"<script>{offline.get_plotlyjs()}</script></head><body>"
            f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header><main>"
            + "".join(sections) + "</main></body></html>")


def _evaluation(result: dict[str, Any]) -> str:
    names = list(result.get("analyzers") or {})
    what = (f"{result.get('data', '')}: {result.get('n', 0)} labelled texts (gold column "
            f"'{result.get('label_column', '')}')")
    parts = [_section("Sentiment analyzers against the gold labels", what,
                      [("accuracy, macro and weighted F1", _figure_html(_eval_metrics(result), "eval", "eval"))])]
    cells = [(f"{n}: confusion (rows gold, columns predicted)",
              _figure_html(_eval_confusion(n, result["analyzers"][n]), "eval_confusion", n)) for n in names]
    for i in range(0, len(cells), 3):
        parts.append(_section("Confusion matrices" if i == 0 else "", "" if i else "per analyzer", cells[i:i + 3]))
    table = ("<table><tr><th>analyzer</th><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
             "<th>support</th></tr>" + "".join(
                 f"<tr><td>{html.escape(n)}</td><td>{html.escape(c)}</td><td>{v['precision']:.3f}</td>"
                 f"<td>{v['recall']:.3f}</td><td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>"
                 for n in names for c, v in (result["analyzers"][n].get("per_class") or {}).items()) + "</table>")
    parts.append(_section("Per class", "precision and recall of each label", [("", table)]))
    return "".join(parts)

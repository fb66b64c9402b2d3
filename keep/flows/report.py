"""``keep report``: the quality report (``reports/bench/quality.json``) as HTML and plots.

Reads the JSON that ``models.evaluation.summarise_arms`` produces and writes, into one
folder (``reports/quality/`` by default):

- ``auc_by_day.png``: each arm's AUC per day (mean over seeds), the oracle's AUC (the ceiling
  the generator knows), and the knowledge-lineage switch day as a vertical line;
- ``gap_closed.png``: the share of the base → oracle gap that KEEP closes, with its 95%
  interval over seeds;
- ``calibration.png``: predicted / observed CTR per day for each arm (1 is calibrated);
- ``index.html``: the plots and a table of the arms (plus the pre-training comparison with
  reference numbers when the JSON has one). Plain HTML: no script, nothing fetched.

Every number on the page goes through ``fmt``, so the page shows the JSON's values exactly
as rounded there. Plots use matplotlib's Agg canvas (``Figure`` without pyplot): no display.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import dates as mdates
from matplotlib.figure import Figure

# Headings of the arms table; ``arm_rows`` builds the cells in this order.
ARM_COLUMNS = (
    "arm",
    "AUC ± 95% CI",
    "GAUC",
    "log loss",
    "calibration",
    "RelaImpr",
    "AUC after switch",
)
ORACLE_STYLE: dict[str, Any] = {"color": "black", "linestyle": "--", "linewidth": 1.5}
SWITCH_STYLE: dict[str, Any] = {"color": "tab:red", "linestyle": ":", "linewidth": 1.5}


def fmt(value: Any) -> str:
    """The one number format of the report: 4 decimals; a missing or undefined value is '–'."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


@dataclass(frozen=True)
class ReportFiles:
    index: Path
    auc_by_day: Path
    gap_closed: Path
    calibration: Path


def load_quality(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def arm_rows(data: dict[str, Any]) -> list[list[str]]:
    """The arms table, one row of formatted cells per arm (columns of ``ARM_COLUMNS``)."""
    rows = []
    after = data.get("after_switch") or {}
    for arm, summary in data["arms"].items():
        rows.append(
            [
                arm,
                f"{fmt(summary['auc'])} ± {fmt(summary['auc_ci95'])}",
                fmt(summary["gauc"]),
                fmt(summary["logloss"]),
                fmt(summary["calibration"]),
                fmt(summary["relaimpr"]),
                fmt(after.get(arm)),
            ]
        )
    return rows


def _days(data: dict[str, Any]) -> np.ndarray:
    """The x axis: days as numpy dates, which matplotlib puts on a date axis."""
    return np.array(data["days"], dtype="datetime64[D]")


def _mark_switch(ax: Any, data: dict[str, Any]) -> None:
    if data.get("switch_ds"):
        switch = mdates.date2num(dt.date.fromisoformat(data["switch_ds"]))
        ax.axvline(switch, label="lineage switch", **SWITCH_STYLE)


def _finish(fig: Figure, ax: Any, path: Path) -> None:
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def plot_auc_by_day(data: dict[str, Any], path: Path) -> Path:
    days = _days(data)
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for arm, summary in data["arms"].items():
        rows = [summary["by_day"][d] for d in data["days"]]
        mean = [_nan(r["auc"]) for r in rows]
        half = [0.0 if r["auc_ci95"] is None else r["auc_ci95"] for r in rows]
        (line,) = ax.plot(days, mean, marker="o", markersize=3, label=arm)
        lower = [m - h for m, h in zip(mean, half, strict=True)]
        upper = [m + h for m, h in zip(mean, half, strict=True)]
        ax.fill_between(days, lower, upper, color=line.get_color(), alpha=0.15)
    oracle = [_nan(data["oracle"]["by_day"][d]["auc"]) for d in data["days"]]
    ax.plot(days, oracle, label="oracle", **ORACLE_STYLE)
    _mark_switch(ax, data)
    ax.set_title("AUC per day (mean over seeds, band: 95% CI)")
    ax.set_ylabel("AUC")
    _finish(fig, ax, path)
    return path


def plot_gap_closed(data: dict[str, Any], path: Path) -> Path:
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    gap, half = data.get("gap_closed"), data.get("gap_closed_ci95")
    if gap is None:
        ax.text(0.5, 0.5, "no KEEP arm", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.bar(
            ["keep"],
            [gap],
            yerr=None if half is None else [half],
            capsize=10,
            color="tab:green",
            label=f"{fmt(gap)} ± {fmt(half)}",
        )
    ax.axhline(0.0, label="base", color="grey", linewidth=1)
    ax.axhline(1.0, label="oracle", **ORACLE_STYLE)
    ax.set_title("share of the base → oracle AUC gap closed")
    ax.set_ylabel("gap closed (95% CI over seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_calibration(data: dict[str, Any], path: Path) -> Path:
    days = _days(data)
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for arm, summary in data["arms"].items():
        values = [_nan(summary["by_day"][d]["calibration"]) for d in data["days"]]
        ax.plot(days, values, marker="o", markersize=3, label=arm)
    ax.axhline(1.0, label="calibrated", color="grey", linewidth=1)
    _mark_switch(ax, data)
    ax.set_title("calibration per day: predicted CTR / observed CTR")
    ax.set_ylabel("predicted / observed")
    _finish(fig, ax, path)
    return path


def _table(headings: list[str], rows: list[list[str]], css_class: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>\n"
        for row in rows
    )
    return f'<table class="{css_class}">\n<tr>{head}</tr>\n{body}</table>'


def references_table(table: Any) -> str:
    """The pre-training comparison given to ``summarise_arms``: a list of rows (dicts,
    columns from the first row) or one dict of name → value."""
    if isinstance(table, dict):
        table = [{"name": k, "value": v} for k, v in table.items()]
    if not table:
        return ""
    headings = list(table[0])
    rows = [[fmt(row.get(h)) for h in headings] for row in table]
    return _table(headings, rows, "references")


def render_html(data: dict[str, Any], files: ReportFiles) -> str:
    switch = data.get("switch_ds")
    facts = [
        f"days: {html.escape(data['days'][0])} .. {html.escape(data['days'][-1])} "
        f"({len(data['days'])})",
        f"seeds: {', '.join(str(s) for s in data['seeds'])}",
        f"lineage switch: {html.escape(switch) if switch else 'none'}",
        f"oracle AUC: {fmt(data['oracle']['auc'])}",
        f"gap closed by KEEP: {fmt(data.get('gap_closed'))} ± {fmt(data.get('gap_closed_ci95'))}",
        "plugged model at initialisation, max |difference| from the unplugged one: "
        f"{fmt(data.get('noop_at_init_max_abs_diff'))}",
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>KEEP quality report</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>",
        "</head><body>",
        "<h1>KEEP quality report</h1>",
        "<p>Progressive validation: each day is scored by the model trained through the day "
        "before. Means over days and seeds; ± is the 95% interval over seeds (Student t). "
        "RelaImpr is relative to the base arm; after switch averages the days after the "
        "lineage switch.</p>",
        "<ul>" + "".join(f"<li>{fact}</li>" for fact in facts) + "</ul>",
        "<h2>Arms</h2>",
        _table(list(ARM_COLUMNS), arm_rows(data), "arms"),
        "<h2>AUC per day</h2>",
        f'<img src="{files.auc_by_day.name}" alt="AUC per day per arm, with the oracle">',
        "<h2>Gap closed</h2>",
        f'<img src="{files.gap_closed.name}" alt="share of the base to oracle gap closed">',
        "<h2>Calibration</h2>",
        f'<img src="{files.calibration.name}" alt="calibration per day per arm">',
    ]
    if data.get("pretrain_vs_references"):
        parts += ["<h2>Pre-training vs references</h2>"]
        parts += [references_table(data["pretrain_vs_references"])]
    if data.get("grid"):
        parts += ["<h2>Tuning grid</h2>"]
        parts += [f"<pre>{html.escape(json.dumps(data['grid'], indent=2))}</pre>"]
    parts += ["</body></html>", ""]
    return "\n".join(parts)


def write_report(quality_json: Path, out_dir: Path) -> ReportFiles:
    """Write the plots and ``index.html`` for ``quality_json`` into ``out_dir``."""
    data = load_quality(quality_json)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        index=out_dir / "index.html",
        auc_by_day=plot_auc_by_day(data, out_dir / "auc_by_day.png"),
        gap_closed=plot_gap_closed(data, out_dir / "gap_closed.png"),
        calibration=plot_calibration(data, out_dir / "calibration.png"),
    )
    files.index.write_text(render_html(data, files), encoding="utf-8")
    return files

"""The report's HTML page: one self-contained file, its tables formatted for a reader and
its plots embedded as data URIs, so that it can be mailed or archived alone."""

from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Callable, Mapping
from numbers import Number
from typing import Any

import pandas as pd

from custseg import columns as c
from custseg.insights.report import CUSTOMERS, ReportContent, RunInfo, segment_order

log = logging.getLogger(__name__)


RULES = {
    "guarded": "the sweep's silhouette, then a minimum segment share and per-k stability (see the reason)",
    "silhouette": "the smallest k whose silhouette is within segment.silhouette_tolerance of the best",
    "elbow": "the knee of the WCSS curve (the point farthest below the chord)",
    "config": "fixed in the configuration (segment.k)",
}


def fmt_text(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def fmt_count(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{int(value):,}"


def fmt_number(value: Any, digits: int = 2) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):,.{digits}f}"


def fmt_share(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):.1%}"


SEGMENT_COLUMNS: dict[str, tuple[str, Callable[[Any], str]]] = {
    c.SEGMENT_ID: ("Segment", str),
    "segment_name": ("Name", fmt_text),
    "description": ("Description", fmt_text),
    CUSTOMERS: ("Customers", fmt_count),
    "customer_share": ("Share of customers", fmt_share),
    "revenue": ("Revenue", fmt_number),
    "revenue_share": ("Share of revenue", fmt_share),
    "revenue_index": ("Revenue index", lambda v: fmt_number(v, 0)),
    "dominant_rfm_segment": ("Dominant RFM segment", fmt_text),
    "dominant_rfm_share": ("its share", fmt_share),
    "median_clv": ("Median CLV", fmt_number),  # profiles of a run without customer value: "–"
    "mean_p_alive": ("Mean P(alive)", fmt_number),
}


SWEEP_COLUMNS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "k": ("k", str),
    "wcss": ("WCSS", fmt_number),
    "silhouette": ("Silhouette", lambda v: fmt_number(v, 4)),
    "calinski_harabasz": ("Calinski-Harabasz", fmt_number),
    "davies_bouldin": ("Davies-Bouldin", lambda v: fmt_number(v, 4)),
    "smallest_share": ("Smallest segment", fmt_share),
    "stability": ("Bootstrap Jaccard (lowest)", lambda v: fmt_number(v, 2)),
    "chosen": ("Chosen", lambda v: "✔" if v else ""),
    "reason": ("Verdict", fmt_text),
}


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
thead th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody th { text-align: left; font-weight: normal; background: #fafafa; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
.note { color: #666; font-style: italic; }
"""


def html_table(table_id: str, frame: pd.DataFrame, formats: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    """``frame`` as an HTML table (every header and cell escaped); numbers right-aligned.
    ``formats`` maps a column to its formatter; the default is ``str``."""
    formats = formats or {}
    head = "".join(f"<th>{html.escape(str(col))}</th>" for col in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for col, value in zip(frame.columns, row, strict=True):
            text = html.escape(formats.get(col, str)(value))
            numeric = isinstance(value, Number) and not isinstance(value, bool)
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table id="{html.escape(table_id)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def matrix_table(table_id: str, matrix: pd.DataFrame) -> str:
    """A count matrix (index: row labels) as an HTML table with counts formatted."""
    frame = matrix.reset_index()
    return html_table(table_id, frame, {col: fmt_count for col in matrix.columns})


def _renamed(frame: pd.DataFrame, columns: Mapping[str, tuple[str, Callable[[Any], str]]]) -> tuple[pd.DataFrame, dict]:
    present = [col for col in columns if col in frame.columns]
    shown = frame[present].rename(columns={col: columns[col][0] for col in present})
    return shown, {columns[col][0]: columns[col][1] for col in present}


def _image(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="plot-{html.escape(name)}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _header(info: RunInfo) -> str:
    rule = RULES.get(info.rule, info.rule)
    variance = (
        f"{len(info.explained_variance)} principal components explaining {fmt_share(sum(info.explained_variance))}"
        if info.explained_variance
        else "no PCA"
    )
    rows = [
        ("Run", info.run_id),
        ("Model version", info.model_version),
        ("As-of date", info.as_of_date.isoformat() if info.as_of_date else "–"),
        ("Algorithm", info.algorithm),
        ("k", str(info.k)),
        ("k chosen by", f"{info.rule}: {rule}"),
        *([("Why this k", info.reason)] if info.reason else []),
        ("Customers in the fit", fmt_count(info.customers)),
        ("Model features", ", ".join(info.features)),
        ("Model space", variance),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table id="run"><tbody>{body}</tbody></table>'


PLOT_TITLES = {
    "segment_sizes": "Segment sizes and revenue shares",
    "k_sweep": "k sweep: WCSS, silhouette, Calinski-Harabasz and Davies-Bouldin against k",
    "silhouette": "Per-customer silhouettes by segment",
    "pca": "PCA scatter of the sample",
    "tsne": "t-SNE scatter of the sample",
    "feature_heatmap": "Segment medians as percentiles of all customers",
}


def render_html(content: ReportContent, plots: Mapping[str, bytes]) -> str:
    """The whole page: header, segment table, then each section with its plot (or a
    note saying why there is none) and table. Pure: the same content gives the same text."""
    info = content.info

    def plot(name: str) -> str:
        if name in plots:
            return _image(name, plots[name], PLOT_TITLES.get(name, name))
        return _note(content.notes.get(name, f"{PLOT_TITLES.get(name, name)}: not available."))

    segments, segment_formats = _renamed(
        content.segments.set_index(c.SEGMENT_ID, drop=False)
        .loc[segment_order(content.segments[c.SEGMENT_ID].tolist())]
        .reset_index(drop=True),
        SEGMENT_COLUMNS,
    )
    sweep, sweep_formats = _renamed(content.sweep, SWEEP_COLUMNS)
    if content.migrations is not None:
        since = (
            f"Customers by previous segment (rows) and current segment (columns), since run {content.previous_run_id}."
        )
        migrations = _note(since) + matrix_table("migrations", content.migrations)
    else:
        migrations = '<p id="first-run">This is the first run: there are no previous labels to compare with.</p>'
    rfm = (
        matrix_table("rfm-cross", content.rfm)
        if content.rfm is not None
        else _note("The features table has no RFM segments (no transaction sources).")
    )
    sample = (
        f"The silhouettes and the scatters below use a sample of {content.sample_size:,} customers, at most "
        f"{content.sample_per_segment:,} per segment, drawn by a seeded hash of the customer id."
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Customer segments: run {html.escape(info.run_id)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Customer segments: run {html.escape(info.run_id)}</h1>",
        _header(info),
        "<h2>Segments</h2>",
        html_table("segments", segments, segment_formats),
        "<h2>1. Choosing k</h2>",
        plot("k_sweep"),
        html_table("k-sweep", sweep, sweep_formats),
        "<h2>2. Silhouette per segment</h2>",
        _note(sample),
        plot("silhouette"),
        "<h2>3. The segments in two dimensions</h2>",
        plot("pca"),
        plot("tsne"),
        "<h2>4. Segment profiles</h2>",
        plot("feature_heatmap"),
        plot("segment_sizes"),
        "<h2>5. RFM segment × segment</h2>",
        _note("Customers per RFM segment (rows) and segment (columns); -1: not placed by the model."),
        rfm,
        "<h2>6. Migration since the previous run</h2>",
        migrations,
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"

"""One self-contained HTML page per experiment: every plot embedded as a base64 PNG, the
comparison table, the grid that produced the runs, host and versions, and the runs that
failed or diverged with their error. No external file, script or stylesheet: the page can
be opened anywhere or sent by mail.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pandas as pd

from fedbench.report.frame import logged_metrics
from fedbench.report.labels import PLOTS, ReportError, config_labels, shared_settings
from fedbench.report.plots import MATPLOTLIB_VERSION, Figure, figure
from fedbench.report.tables import _cells, _notes, render, summary

if TYPE_CHECKING:
    from fedbench.store import Store

# metrics that are axes or bookkeeping, not results: never a panel of their own
AXIS_METRICS = ("bits_up", "bits_down", "wall_s", "sim_time_s")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #e3e3e3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.note { color: #555; font-size: 0.85em; margin: 0.2em 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
"""


def png_data_uri(fig: Figure) -> str:
    """A figure as a "data:image/png;base64,..." URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def table_html(table: pd.DataFrame) -> str:
    """The summary table as an HTML table (mean ± std cells) and its notes."""
    cells = _cells(table, " ± ", html.escape)
    head = "".join(f"<th>{h}</th>" for h in cells.headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if r else f"<td>{c}</td>"
            for c, r in zip(row, cells.right, strict=True)
        )
        + "</tr>"
        for row in cells.rows
    )
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in _notes(table))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def figure_title(fig: Figure) -> str:
    """What a figure shows, as its title says it ("quickstart: test accuracy vs uplink
    bits", "quickstart: local loss / participants vs round"), for its caption and alt text;
    never a plot kind's option name."""
    if fig.get_suptitle():  # several panels: the figure's title, not the first panel's
        return str(fig.get_suptitle())
    return str((fig.axes[0].get_title() if fig.axes else "") or "figure")


def _records_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_text(r[c]))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return str(v)


def default_figures(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    group_by: Sequence[str] | None,
    bits: str,
    per_client: bool,
    band: str,
    skip: Sequence[str] = (),
    **options: Any,
) -> list[tuple[str, Figure]]:
    """Every named plot kind these runs have the metrics for, then one figure with a panel per
    other logged result metric against rounds; kinds in ``skip`` (figures the page already
    has) are left out, so each figure appears once. ``options``: :func:`figure`'s
    at_common_round and shape."""
    out: list[tuple[str, Figure]] = []
    common: dict[str, Any] = {
        "group_by": group_by,
        "bits": bits,
        "per_client": per_client,
        "band": band,
        **options,
    }
    used: set[str] = set()
    for kind in PLOTS:
        if kind in skip:
            continue
        try:
            fig = figure(runs, metrics, kind, **common)
        except ReportError:
            continue  # this kind's metric or axis was not logged
        out.append((kind, fig))
        used.add(fig.axes[0].get_ylabel())
    from fedbench.report.plots import Y_LABELS

    covered = {"test_accuracy", "train_loss", "test_loss", "grad_norm_sq"}
    rest = [
        m for m in logged_metrics(runs, metrics)
        if m not in AXIS_METRICS and m not in covered and Y_LABELS.get(m, m) not in used
    ]  # fmt: skip
    if rest and "+".join(rest) not in skip:
        with contextlib.suppress(ReportError):  # e.g. every value non-finite
            out.append(
                (f"{', '.join(rest)} vs round", figure(runs, metrics, None, y=rest, **common))
            )
    return out


def html_page(
    store: Store,
    name: str,
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    table: pd.DataFrame | None = None,
    group_by: Sequence[str] | None = None,
    bits: str = "up",
    per_client: bool = True,
    band: str = "minmax",
    target_accuracy: float | None = None,
    extra: Sequence[tuple[str, Figure]] = (),
    at_common_round: bool = False,
    shape: Any = None,
    tables: Sequence[pd.DataFrame] = (),
    protocol: str = "",
    labels: pd.Series | None = None,
) -> str:
    """The HTML page of experiment ``name`` (see the module docstring) as a string.

    ``extra``: (kind, figure) pairs asked for on the command line, shown first; the default
    figures of the same kinds are not repeated. ``tables``: more tables (a comparison).
    ``protocol``: how --select chose the settings, one sentence stated above the table and
    under each figure; ``labels``: its curve labels per run."""
    if table is None:
        table = summary(
            runs, metrics, group_by=group_by, target_accuracy=target_accuracy, bits=bits,
            per_client=per_client, at_common_round=at_common_round,
        )  # fmt: skip
    options: dict[str, Any] = {"at_common_round": at_common_round}
    if shape is not None:
        options["shape"] = shape
    if protocol:
        options["notes"] = [f"selection: {protocol}"]
    if labels is not None:
        options["labels"] = labels
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fedbench: {e(name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>fedbench report: {e(name)}</h1>",
    ]
    shared = shared_settings(runs)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<p class="note">{len(runs)} runs; generated {when}</p>')
    if shared:
        parts.append(f"<p>All runs: {e(shared)}</p>")
    if target_accuracy is not None:
        parts.append(f"<p>Target: test accuracy ≥ {target_accuracy:g}</p>")
    if protocol:
        parts.append(f'<p class="protocol">Selection: {e(protocol)}.</p>')
    parts.append("<h2>Summary over seeds</h2>")
    parts.append(table_html(table))
    for more in tables:
        parts.append("<h2>Comparison</h2>")
        parts.append(table_html(more))
    parts.append("<h2>Plots</h2>")
    figures = [f for _, f in extra]
    figures += [f for _, f in default_figures(
        runs, metrics, group_by, bits, per_client, band, skip=[k for k, _ in extra], **options
    )]  # fmt: skip
    for fig in figures:
        title = figure_title(fig)
        parts.append(
            f'<figure><img alt="{e(title)}" src="{png_data_uri(fig)}">'
            f"<figcaption>{e(title)}</figcaption></figure>"
        )
    parts.append("<h2>Runs that failed or diverged</h2>")
    labels = config_labels(runs)
    why = {"diverged": "non-finite loss or model (stopped early)"}
    bad = runs["status"].astype(str).isin(["failed", "diverged"]).to_numpy()
    parts.append(
        _records_html(
            [
                {
                    "id": int(r["run_id"]),
                    "key": str(r["key"])[:12],
                    "configuration": labels.iloc[i],
                    "seed": r["seed"],
                    "status": r["status"],
                    "rounds": None if pd.isna(r["rounds_logged"]) else int(r["rounds_logged"]),
                    "why": r["error"]
                    if isinstance(r.get("error"), str)
                    else why.get(str(r["status"])),
                }
                for i, (_, r) in enumerate(runs.iterrows())
                if bad[i]
            ]
        )
    )
    parts.append("<h2>Grid</h2>")
    exps = store.export("experiments")
    row = exps[exps["name"] == name]
    if len(row):
        parts.append(f'<p class="note">{e(str(row["grid_path"].iloc[0]))}</p>')
        parts.append(f"<pre>{e(str(row['grid_toml'].iloc[0]))}</pre>")
    parts.append("<h2>Host and versions</h2>")
    parts.append(_records_html(_versions(runs)))
    parts.append("<h2>Provenance</h2>")
    parts.append(_records_html(_provenance(store, runs, labels)))
    parts.append("<h2>Table as CSV</h2>")
    parts.append(f"<pre>{e(render(table, 'csv'))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _provenance(store: Store, runs: pd.DataFrame, labels: pd.Series) -> list[dict[str, Any]]:
    """Per run what `fedbench.provenance` recorded: commit (and uncommitted changes), grid
    file and hash, CPU, load average at start and end."""
    from fedbench import provenance

    rows: list[dict[str, Any]] = []
    for i, (_, r) in enumerate(runs.iterrows()):
        prov = r.get("provenance")
        if not isinstance(prov, dict):
            prov = provenance.recorded(store, int(r["run_id"]))
        text = dict(provenance.lines(prov))
        if not text:
            continue
        rows.append({
            "id": int(r["run_id"]), "configuration": labels.iloc[i], "seed": r["seed"],
            **{k: text.get(k) for k in ("commit", "grid sha256", "cpu", "load start", "load end")},
        })  # fmt: skip
    return rows


def _versions(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Hosts, devices and versions the runs recorded, then those of this report."""
    from fedbench.store import _fedbench_version

    rows: list[dict[str, Any]] = []
    cols = [c for c in ("host", "device", "fedbench_version", "torch_version") if c in runs]
    for rec in runs[cols].drop_duplicates().to_dict("records") if cols else []:
        rows.append(
            {
                "source": "runs",
                "host": rec.get("host"),
                "device": rec.get("device"),
                "versions": f"fedbench {_text(rec.get('fedbench_version'))}, "
                f"torch {_text(rec.get('torch_version'))}",
            }
        )
    rows.append(
        {
            "source": "this report",
            "host": platform.node(),
            "device": platform.platform(),
            "versions": f"fedbench {_fedbench_version()}, python {platform.python_version()}, "
            f"pandas {pd.__version__}, matplotlib {MATPLOTLIB_VERSION}",
        }
    )
    return rows

"""Reporting: the tidy results frame, comparison tables, plots and the HTML page (DESIGN §5-7).

Each part reads alone:

- :mod:`fedbench.report.labels`: which config fields vary across runs, configuration labels.
- :mod:`fedbench.report.frame`: per-round values, curves over seeds, :func:`load_frame` (one
  row per run × round, config flattened to columns, metrics as columns).
- :mod:`fedbench.report.tables`: :func:`summary` over seeds and :func:`render` as text.
- :mod:`fedbench.report.plots`: :func:`figure` / :func:`plot` (the only matplotlib importer).
- :mod:`fedbench.report.html`: one self-contained HTML page per experiment.

The plotting and HTML modules are imported lazily (matplotlib is slow to import).
"""

from __future__ import annotations

from typing import Any

from fedbench.report.frame import (
    bits_axis_label,
    bits_convention,
    curves,
    load,
    load_frame,
    logged_metrics,
    split,
    tidy,
)
from fedbench.report.labels import (
    BAND,
    BITS,
    FORMATS,
    PLOTS,
    X_AXES,
    ReportError,
    config_labels,
    pooled_fields,
    varying_fields,
)
from fedbench.report.tables import check_target, render, summary

_LAZY = {
    "figure": "plots",
    "plot": "plots",
    "KINDS": "plots",
    "Y_LABELS": "plots",
    "html_page": "html",
}


def __getattr__(name: str) -> Any:
    """figure, plot, KINDS (fedbench.report.plots) and html_page (fedbench.report.html),
    imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"fedbench.report.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fedbench.report' has no attribute {name!r}")


__all__ = [
    "BAND",
    "BITS",
    "FORMATS",
    "PLOTS",
    "X_AXES",
    "ReportError",
    "bits_axis_label",
    "bits_convention",
    "check_target",
    "config_labels",
    "curves",
    "load",
    "load_frame",
    "logged_metrics",
    "pooled_fields",
    "render",
    "split",
    "summary",
    "tidy",
    "varying_fields",
]

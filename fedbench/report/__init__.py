"""Reporting: the tidy results frame, comparison tables, plots and the HTML page (DESIGN §5-7).

Each part reads alone:

- :mod:`fedbench.report.labels`: which config fields vary across runs, configuration labels.
- :mod:`fedbench.report.frame`: per-round values, curves over seeds, :func:`load_frame` (one
  row per run × round, config flattened to columns, metrics as columns).
- :mod:`fedbench.report.tables`: :func:`summary` over seeds and :func:`render` as text.
- :mod:`fedbench.report.plots`: :func:`figure` / :func:`plot` (the only matplotlib importer).
- :mod:`fedbench.report.html`: one self-contained HTML page per experiment.

Every name is imported from its submodule on first use (pandas and matplotlib are slow to
import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# name -> the submodule that defines it, imported on first use: importing a submodule alone
# (`fedbench.report.select` in `report`'s grid-expanding child process) loads no pandas
_LAZY = {
    **dict.fromkeys(
        ("bits_axis_label", "bits_convention", "curves", "load", "load_frame",
         "logged_metrics", "split", "tidy"),
        "frame",
    ),
    **dict.fromkeys(
        ("BAND", "BITS", "FORMATS", "PLOTS", "X_AXES", "ReportError", "config_labels",
         "pooled_fields", "varying_fields"),
        "labels",
    ),
    **dict.fromkeys(("check_target", "render", "summary"), "tables"),
    **dict.fromkeys(("figure", "plot", "KINDS", "Y_LABELS"), "plots"),
    "html_page": "html",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    """The names below, imported from their submodule on first use (plots and html import
    matplotlib, frame, labels and tables pandas)."""
    if name in _LAZY:
        import importlib

        module = _LAZY[name]
        value = getattr(importlib.import_module(f"fedbench.report.{module}"), name)
        if module not in ("plots", "html"):  # those are looked up on every use (patchable)
            globals()[name] = value
        return value
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

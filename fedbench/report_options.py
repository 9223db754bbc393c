"""The values of `fedbench report`'s options (plot kinds, table formats, x axes, bands, bit
directions). They live outside the `fedbench.report` package, whose import loads pandas, so
that the command line can name them in its help without slowing its start-up;
`fedbench.report.labels` re-exports them."""

from __future__ import annotations

PLOTS = (
    "bits-vs-accuracy",
    "rounds-vs-accuracy",
    "bits-vs-loss",
    "rounds-vs-loss",
    "wall-vs-accuracy",
    "bits-vs-gradnorm",
    "time-vs-accuracy",
    "time-vs-loss",
)
FORMATS = ("table", "markdown", "csv", "json", "latex")
X_AXES = ("round", "bits", "wall", "time", "steps")  # time: simulated s ([network]); steps: inner
BANDS = ("minmax", "std", "ci95", "none")
BITS = ("up", "down", "total")

"""The values of `fedbench report`'s options (plot kinds, table formats, x axes, bands, bit
directions). They live outside the `fedbench.report` package, whose import loads pandas, so
that the command line can name them in its help without slowing its start-up;
`fedbench.report.labels` re-exports them. :func:`printable` is here for the same reason: `ls`
and `show` print names from the database without loading pandas."""

from __future__ import annotations

import unicodedata

PLOTS = (
    "bits-vs-accuracy",
    "rounds-vs-accuracy",
    "bits-vs-loss",
    "rounds-vs-loss",
    "wall-vs-accuracy",
    "bits-vs-gradnorm",
    "time-vs-accuracy",
    "time-vs-loss",
    "client-accuracy-cdf",  # per_client_eval = "all": the clients' accuracies at the last round
)
FORMATS = ("table", "markdown", "csv", "json", "latex")
X_AXES = ("round", "bits", "wall", "time", "steps")  # time: simulated s ([network]); steps: inner
BANDS = ("minmax", "std", "ci95", "none")
BITS = ("up", "down", "total")


def printable(text: object) -> str:
    """``text`` with every control or format character (C0, DEL, C1, bidi overrides) written
    as a Python escape ("\\x1b[31m" stays visible text, never an escape the terminal acts on).
    Tabs and newlines are escaped too: one name stays on one line."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)

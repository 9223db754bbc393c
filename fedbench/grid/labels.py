"""Plot and table labels of jobs: the fields that vary across them, spelled briefly."""

from __future__ import annotations

import json
from collections.abc import Iterable

from fedbench.grid.keys import flat_config
from fedbench.grid.schema import Job, _show


def job_labels(jobs: Iterable[Job]) -> dict[str, str]:
    """A short label per job from the fields that vary across the jobs (seed excluded):
    names by value ("scaffold topk"), other fields as "field=value"."""
    jobs = list(jobs)
    flats = {j.key: flat_config(j.config) for j in jobs}
    keys = sorted({k for f in flats.values() for k in f})
    # a field varies when its values differ where it is present (fields that exist only for
    # some components, like server_lr, are implied by the component's name)
    varying = [
        k
        for k in keys
        if len({json.dumps(f[k], sort_keys=True) for f in flats.values() if k in f}) > 1
    ]
    order = {"algorithm.name": 0, "compressor.name": 1, "compressor.error_feedback": 2}
    varying.sort(key=lambda k: (order.get(k, 3), k))
    labels = {}
    for j in jobs:
        f = flats[j.key]
        parts = []
        for k in varying:
            v = f.get(k)
            ef_only = k == "compressor.error_feedback" and "compressor.name" not in varying
            if k == "compressor.name" or ef_only:  # error feedback spelled "ef(topk)"
                parts.append(j.compressor)
            elif k.endswith(".name") or k in ("task.dataset", "task.model", "task.partition"):
                parts.append(str(v) if k != "downlink.name" else f"down={v}")
            elif k == "compressor.error_feedback":
                pass  # in the compressor's name
            elif v is not None:
                parts.append(f"{k.split('.', 1)[1]}={_show(v) if not isinstance(v, str) else v}")
        labels[j.key] = " ".join(p for p in parts if p) or j.algorithm
    return labels

"""Job keys and the flat views of a job's config: the key hashes what changes the numbers
(so re-running a grid skips finished jobs), run_config is what the database stores, filter_jobs
is `--only`."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from fedbench.grid.schema import NOT_KEYED, GridError, Job, section_params

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def job_key(config: Mapping[str, Any], seed: int) -> str:
    """Hash of the resolved config and the seed. Left out: fields that do not change the
    numbers (NOT_KEYED), and fields added in a later release (`Param.since`) while they hold
    their default."""
    keyed: dict[str, Any] = {}
    for section, fields in config.items():
        if not isinstance(fields, Mapping):
            keyed[section] = fields
            continue
        schema = section_params(section, fields)
        keyed[section] = {
            k: v
            for k, v in fields.items()
            if not (section == "experiment" and k in NOT_KEYED)
            and not (k in schema and schema[k].since and v == schema[k].default)
        }
        for k, v in fields.items():  # values whose computation was fixed later: a new key
            fixed = [rel for val, rel in (schema[k].changed if k in schema else ()) if val == v]
            if fixed:
                keyed[section][f"{k}@"] = fixed[-1]
    blob = json.dumps(
        {"config": keyed, "seed": seed},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_config(job: Job) -> dict[str, Any]:
    """What the database stores for a run: the resolved sections plus the seed."""
    return {**job.config, "seed": job.seed}


def filter_jobs(jobs: Iterable[Job], only: Iterable[str]) -> list[Job]:
    """Keep jobs whose resolved `section.field` equals the given value (`--only KEY=VALUE`)."""
    conds = []
    for item in only:
        k, sep, v = item.partition("=")
        if not sep or "." not in k:
            raise GridError([f"--only {item!r}: expected section.field=value"])
        try:
            val = tomllib.loads(f"v = {v}")["v"]
        except tomllib.TOMLDecodeError:
            val = v
        conds.append((k.split(".", 1), val))
    return [
        j
        for j in jobs
        if all(
            (f == "seed" and s == "experiment" and j.seed == val)
            or j.config.get(s, {}).get(f) == val
            for (s, f), val in conds
        )
    ]


def flat_config(config: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        f"{s}.{k}": v
        for s, sec in config.items()
        if isinstance(sec, Mapping)
        for k, v in sec.items()
    }

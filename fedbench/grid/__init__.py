"""TOML grid -> list of jobs, with whole-grid validation (DESIGN §4, a contract).

A grid has base sections (`[experiment]`, `[task]`, `[algorithm]`, `[compressor]`,
`[downlink]`), optional `[grid]` axes ("section.field" = list) and optional `[[variant]]`
tables. Jobs are the base grid (base config × grid axes) plus one family per variant (base,
then the variant's overrides, which take precedence over a grid axis on the same key, × the
remaining grid axes × the variant's own list-valued axes), each times the seeds.

Every job is resolved: defaults filled in for the chosen dataset, model, partition, algorithm
and compressors. A field that no registered component understands is an error; a field that
only other components understand (e.g. `ratio` when `compressor.name = "identity"` on one
axis value) is dropped from that job, and jobs that become identical are merged. The job key
is a hash of the resolved config and the seed, so a re-run skips finished jobs and editing one
value re-runs only the jobs it changes.

The package, by concern (each file imports only those above it):
    schema      sections, the fields every job has (COMMON), components per section;
                Job, Grid, GridError
    resolution  one job: defaults, value checks, checks across fields (`resolve`)
    keys        job_key, run_config, flat_config, filter_jobs (`--only`)
    expand      the file: TOML, base sections, [grid] axes, [[variant]] families, seeds (`load`)
    labels      short labels of jobs for plots and tables (`job_labels`)
"""

from fedbench.grid.expand import (
    FIXED_PER_GRID,
    MAX_DEPTH,
    MAX_JOBS,
    MAX_NAME,
    MAX_SEED,
    Family,
    load,
    name_problem,
    parse,
)
from fedbench.grid.keys import filter_jobs, flat_config, job_key, run_config
from fedbench.grid.labels import job_labels
from fedbench.grid.resolution import resolve
from fedbench.grid.schema import (
    BITS_CONVENTIONS,
    COMMON,
    FIELD_ALIASES,
    NOT_KEYED,
    OPTIONAL_SECTIONS,
    SECTIONS,
    TOP_LEVEL,
    Grid,
    GridError,
    Job,
    allowed_fields,
    dataset_name,
    did_you_mean,
    section_params,
)

__all__ = [
    "BITS_CONVENTIONS",
    "COMMON",
    "FIELD_ALIASES",
    "FIXED_PER_GRID",
    "MAX_DEPTH",
    "MAX_JOBS",
    "MAX_NAME",
    "MAX_SEED",
    "NOT_KEYED",
    "OPTIONAL_SECTIONS",
    "SECTIONS",
    "TOP_LEVEL",
    "Family",
    "Grid",
    "GridError",
    "Job",
    "allowed_fields",
    "dataset_name",
    "did_you_mean",
    "filter_jobs",
    "flat_config",
    "job_key",
    "job_labels",
    "load",
    "name_problem",
    "parse",
    "resolve",
    "run_config",
    "section_params",
]

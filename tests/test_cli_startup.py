"""An instant CLI: `fedbench --help`, `ls`, `show` and the `--help` of the commands do not
import torch, pandas, SQLAlchemy or matplotlib unless the command needs them (each case runs
in a fresh interpreter and reads its sys.modules), and the lazy command listing is the
commands' own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.core import TyperCommand

from fedbench import cli
from fedbench.store import RunSpec, Store

ROOT = Path(__file__).resolve().parents[1]
# pydantic: typer 0.29 converts option values with it unless fedbench.cli.plain_values does
HEAVY = ("torch", "pandas", "matplotlib", "sklearn", "sqlalchemy", "pydantic")

PROBE = f"""
import json, sys
sys.argv = ["fedbench", *json.loads(sys.argv[1])]
from fedbench.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def heavy_imports(*args: str) -> list[str]:
    """The heavy modules a CLI call imported, in a fresh interpreter (exit status 0 asserted)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] in (0, None), out.stdout + out.stderr
    return list(result["heavy"])


@pytest.mark.parametrize(
    "args",
    [("--help",), ("validate", "--help"), ("ls", "--help"), ("show", "--help"),
     ("export", "--help"), ("run", "--help")],
)  # fmt: skip
def test_help_imports_no_heavy_library(args: tuple[str, ...]):
    assert heavy_imports(*args) == []


def test_ls_and_show_import_no_heavy_library(tmp_path: Path):
    db = str(tmp_path / "r.db")
    config = {"task": {"dataset": "digits", "clients": 4, "partition": "iid", "test_fraction": 0.2,
                       "data_seed": 0}}  # fmt: skip
    with Store(db) as s:
        exp = s.upsert_experiment("e", "g.toml", "")
        s.ensure_runs(exp, [RunSpec("abcdef01", 0, "fedavg", "identity", "digits", "mlp", config)])
        run_id = int(s.get_run("abcdef01")["id"])
        s.log_round(run_id, 0, {"bits_up": 0.0, "test_accuracy": 0.1})
    # an SQLite file is read through stdlib sqlite3 (fedbench.store.sqlite_reader), without
    # pandas or SQLAlchemy; show --partition rebuilds the data split with numpy only
    assert heavy_imports("ls", "--db", db) == []
    assert heavy_imports("ls", "--db", db, "--experiments", "--format", "csv") == []
    assert heavy_imports("show", "abcd", "--db", db) == []
    assert heavy_imports("show", "abcd", "--db", db, "--format", "json") == []
    assert heavy_imports("show", "abcd", "--db", db, "--partition") == []


PLAIN = {
    str: ["", "x", " a b ", "ünï", "--", "0"],
    list[str]: [("a", "b,c"), [], ["x"]],
    int: ["0", "-0", "007", "-12", "123456789012345678", "1234567890123456789", "1.5", " 3",
          "+3", "1_000", "٣", "abc", "", 5, True],
    float: ["1", "1.5", "-2e-3", "1e3", ".5", "5.", "1E+2", "+1", "inf", "nan", "1_0", " 1",
            "e3", ".", "abc", 1, 2.5],
}  # fmt: skip


@pytest.mark.parametrize("annotation", list(PLAIN), ids=str)
def test_plain_values_are_what_typer_coercion_gives(annotation: Any):
    """`cli.plain_value` answers only where typer's own (pydantic) coercion gives the same
    value of the same type; everything else is left to typer."""
    from typer._coercion import build_runtime_param, resolve_type_descriptor
    from typer.models import OptionInfo

    descriptor = resolve_type_descriptor(annotation, OptionInfo())
    typer_param = build_runtime_param(descriptor)
    answered = 0
    for value in PLAIN[annotation]:
        ok, out = cli.plain_value(annotation, descriptor.parameter_info, value)
        if not ok:
            continue
        answered += 1
        expected = typer_param._coerce_value(value, param=None, ctx=None)  # type: ignore[arg-type]
        assert (out, type(out)) == (expected, type(expected)), value
    assert answered >= 3
    bounded = resolve_type_descriptor(annotation, OptionInfo(min=0))
    assert annotation not in (int, float) or not any(
        cli.plain_value(annotation, bounded.parameter_info, v)[0] for v in PLAIN[annotation]
    )


def test_run_help_default_max_jobs_is_the_grids():
    """`run --help` shows --max-jobs' default without importing the grid module (and torch)."""
    from fedbench import grid
    from fedbench.commands import run

    assert run.MAX_JOBS == grid.MAX_JOBS


def test_lazy_listing_is_the_commands_own_help():
    """`fedbench --help` prints COMMANDS' summaries: they must be what click would print from
    each command's docstring, for any terminal width."""
    for name in cli.COMMANDS:
        cmd = cli.load_command(name)
        for limit in (30, 45, 70, 200):
            lazy = TyperCommand(name, help=cli.COMMANDS[name][2]).get_short_help_str(limit)
            assert lazy == cmd.get_short_help_str(limit), (name, limit)


def test_every_command_module_function_is_listed():
    import fedbench.commands as pkg

    names = {p.stem for p in Path(pkg.__file__).parent.glob("*.py")} - {"__init__", "common"}
    assert {module for module, _, _ in cli.COMMANDS.values()} == names


def test_digits_read_without_sklearn_equal_load_digits():
    from sklearn.datasets import load_digits

    from fedbench.data.builtin import _digits_file

    images, target = _digits_file()
    ref = load_digits()
    assert np.array_equal(images, ref.images) and images.dtype == ref.images.dtype
    assert np.array_equal(target, ref.target) and target.shape == (1797,)

"""A configured downlink is applied or refused (a grid that validates must run, and its results
must not carry the label of a compressor that was never used): methods whose downlink is their
own declare the kinds they admit (`extra["downlink"]`), validation refuses any other in one
line, and every other method sends its downlink through `env.downlink` (its logged downlink
bits follow the configured compressor)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from fedbench import conformance, grid
from fedbench.algorithms import ALGORITHMS
from fedbench.cli import app
from fedbench.grid.resolution import downlink_kinds
from fedbench.store import Store

# methods whose downlink is their own (asynchronous, gossip, all-reduce, built-in compression)
EXACT_ONLY = (
    "async_local_sgd", "cbo", "co2", "d_sgd", "dadao", "dfedsam", "fedasync", "fedbuff",
    "fedfix", "gradskip", "noloco", "onebit_adam", "single_merge", "streaming_diloco",
    "tamuna", "zo_spsa",
)  # fmt: skip
HEAD = '[experiment]\nname = "dl"\nrounds = 2\n[task]\ndataset = "digits"\nmodel = "logreg"\n'
HEAD += "clients = 4\n"
# what a method needs of the task besides the downlink: dadao's μ = "auto" is the l2 λ
TASK_MORE = {"dadao": 'reg = "l2"\nlam = 0.1\n'}


def text(algorithms: list[str], downlink: str, more: str = "") -> str:
    axis = ", ".join(f'"{a}"' for a in algorithms)
    task = "".join(TASK_MORE.get(a, "") for a in algorithms)
    return (f'{HEAD}{task}[downlink]\nname = "{downlink}"\n{more}'
            f'[grid]\n"algorithm.name" = [{axis}]\n')  # fmt: skip


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def error_lines(r: Any) -> list[str]:
    """The `error:` lines of a refused command: exit status 2, no traceback."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert lines and all(x.startswith("error: ") for x in lines), r.output
    return lines


def test_the_declarations_are_the_exact_only_methods_and_ef21_bc() -> None:
    declared = {n: downlink_kinds(ALGORITHMS[n]) for n in ALGORITHMS}
    declared = {n: k for n, k in declared.items() if k is not None}
    assert declared == {**dict.fromkeys(EXACT_ONLY, ("exact",)),
                        "ef21_bc": ("exact", "contractive")}  # fmt: skip
    for n in declared:  # each says why, in words
        assert ALGORITHMS[n].extra["downlink_why"]


@pytest.mark.parametrize("name", EXACT_ONLY)
def test_a_compressed_downlink_is_refused_and_identity_validates(name: str) -> None:
    for down in ("topk", "randk", "qsgd"):
        with pytest.raises(grid.GridError) as e:
            grid.parse(text([name], down), Path("g.toml"))
        (line,) = e.value.problems
        assert line.startswith(f'g.toml: [downlink] downlink.name = "{down}": {name} '), line
        assert line.endswith("; allowed: identity"), line
        assert "\n" not in line
    (job,) = grid.parse(text([name], "identity"), Path("g.toml")).jobs
    assert job.config["downlink"]["name"] == "identity"


def test_ef21_bc_admits_an_exact_or_contractive_downlink() -> None:
    with pytest.raises(grid.GridError) as e:
        grid.parse(text(["ef21_bc"], "randk"), Path("g.toml"))
    (line,) = e.value.problems
    assert line.startswith('g.toml: [downlink] downlink.name = "randk": ef21_bc runs EF21 on '
                           "the downlink"), line  # fmt: skip
    assert "randk is unbiased; allowed: identity, " in line and "topk" in line, line
    assert line.endswith("(or randk with unbiased = false)"), line
    for down, more in (("topk", ""), ("identity", ""), ("randk", "unbiased = false\n")):
        assert grid.parse(text(["ef21_bc"], down, more), Path("g.toml")).jobs


def test_validate_and_run_refuse_the_grid_and_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "dl.toml"
    path.write_text(text(["fedasync", "co2", "tamuna", "fedavg"], "topk"), encoding="utf-8")
    lines = error_lines(invoke("validate", path))
    assert len(lines) == 3, lines  # fedavg broadcasts through the downlink
    for name, why in (("fedasync", "starts each client from the exact current model"),
                      ("co2", "all-reduces the pseudo-gradients"),
                      ("tamuna", "its paper compresses the uplink only")):  # fmt: skip
        (line,) = [x for x in lines if f": {name} " in x]
        assert line.startswith(f'error: {path}: [downlink] downlink.name = "topk": {name} ')
        assert why in line and line.endswith("; allowed: identity"), line
    db = tmp_path / "dl.db"
    assert len(error_lines(invoke("run", path, "--db", db))) == 3
    if db.exists():
        with Store(str(db)) as s:
            assert s.runs_frame().empty


def test_the_same_grid_with_identity_validates_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "dl.toml"
    path.write_text(text(["fedasync", "co2", "tamuna", "fedavg"], "identity"), encoding="utf-8")
    r = invoke("validate", path)
    assert r.exit_code == 0, r.output
    path.write_text(text(["fedasync"], "identity"), encoding="utf-8")
    db = tmp_path / "dl.db"
    r = invoke("run", path, "--db", db)
    assert r.exit_code == 0, r.output
    with Store(str(db)) as s:
        runs = s.runs_frame()
    assert list(runs["status"]) == ["done"]


def _down_bits(job: grid.Job) -> list[int]:
    """The downlink bits logged in each of 2 rounds (all receivers)."""
    _, logs, _, _ = conformance._run(job, rounds=2)
    return [int(log.bits_down.sum()) for log in logs]


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_method_applies_a_configured_downlink_or_refuses_it(name: str) -> None:
    """With a topk downlink (ratio 0.01 by default) a method either is refused at validation,
    by its declaration, or logs fewer downlink bits than with identity in every round that
    sends something down (and something is sent): the property that a method ignoring
    `env.downlink` and logging its dense model breaks."""
    torch.set_num_threads(1)
    job = conformance._job(name, {})  # the first small task it resolves on, identity downlink
    dense = _down_bits(job)
    kinds = downlink_kinds(ALGORITHMS[name])
    cfg = {**job.config, "downlink": {"name": "topk"}}
    try:
        resolved, _ = grid.resolve(cfg)
    except grid.GridError as e:
        assert kinds is not None and "contractive" not in kinds, e.problems
        (line,) = e.problems
        assert line.startswith(f'downlink.name = "topk": {name} '), line
        return
    assert kinds is None or "contractive" in kinds
    squeezed = _down_bits(grid.Job(grid.job_key(resolved, 0), 0, resolved))
    assert any(b > 0 for b in dense), f"{name} sends nothing down: declare its downlink"
    for t, (b, c) in enumerate(zip(dense, squeezed, strict=True), 1):
        assert b == 0 or c < b, f"{name} round {t}: {c} bits with topk, {b} with identity"


def test_a_declared_kind_may_be_one_string() -> None:
    assert downlink_kinds(SimpleNamespace(extra={"downlink": "exact"})) == ("exact",)
    assert downlink_kinds(SimpleNamespace(extra={})) is None


def test_the_catalog_shows_the_restriction() -> None:
    r = invoke("algorithms", "--format", "json")
    assert r.exit_code == 0, r.output
    listed = {a["name"]: a["downlink"] for a in json.loads(r.stdout)["algorithms"]}
    assert listed["co2"] == ["exact"] and listed["fedavg"] == ["any"]
    assert listed["ef21_bc"] == ["exact", "contractive"]
    r = invoke("algorithms")
    assert "exact downlink only" in " ".join(r.output.split())

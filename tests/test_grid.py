"""Grid expansion, resolution, job keys and validation messages (DESIGN §4, a contract)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbench import grid
from fedbench.algorithms import ALGORITHMS
from fedbench.compressors import COMPRESSORS
from fedbench.data import DATASETS, PARTITIONS
from fedbench.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
P = Path("g.toml")


def parse(text: str) -> grid.Grid:
    return grid.parse(text, P)


def problems(text: str) -> list[str]:
    with pytest.raises(grid.GridError) as e:
        parse(text)
    assert e.value.problems, "a GridError must list its problems"
    return e.value.problems


def configs(g: grid.Grid) -> Counter[tuple[Any, ...]]:
    """(algorithm, compressor, lr) of every job, counted over seeds."""
    return Counter((j.algorithm, j.compressor, j.config["algorithm"]["lr"]) for j in g.jobs)


def readme_grid() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Writing a grid", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def to_toml(doc: dict[str, Any]) -> str:
    """A TOML text in the dict's order (every key quoted, values as JSON, valid TOML here)."""
    lines = []
    for section, table in doc.items():
        tables = table if section == "variant" else [table]
        for t in tables:
            lines.append("[[variant]]" if section == "variant" else f"[{section}]")
            lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in t.items()]
    return "\n".join(lines) + "\n"


# -- expansion --------------------------------------------------------------------------------


def test_quickstart_is_six_configurations_times_two_seeds() -> None:
    g = grid.load(ROOT / "experiments" / "quickstart.toml")
    assert len(g.jobs) == 12
    assert g.name == "quickstart"
    by_config = Counter(
        json.dumps(j.config, sort_keys=True) for j in g.jobs
    )  # 6 resolved configurations, each with both seeds
    assert len(by_config) == 6 and set(by_config.values()) == {2}
    assert Counter(j.seed for j in g.jobs) == {0: 6, 1: 6}
    assert set(Counter((j.algorithm, j.compressor) for j in g.jobs)) == {
        ("fedavg", "identity"),
        ("fedavg", "ef(topk)"),
        ("scaffold", "identity"),
        ("scaffold", "ef(topk)"),
        ("ef21", "identity"),
        ("ef21", "topk"),
    }
    for j in g.jobs:  # the variant's scalar override only reaches the ef21 family
        assert j.config["algorithm"]["lr"] == (0.5 if j.algorithm == "ef21" else 0.05)
    assert len(set(grid.job_labels(g.jobs).values())) == 6


def test_readme_example_grid() -> None:
    g = grid.parse(readme_grid(), Path("README.toml"))
    # (fedavg, scaffold) × (identity, topk) + fedprox × mu (2) × (identity, topk); × 3 seeds
    assert len(g.jobs) == 24
    assert g.name == "my-study"
    seen = Counter((j.algorithm, j.compressor, j.config["algorithm"].get("mu")) for j in g.jobs)
    assert seen == {
        ("fedavg", "identity", None): 3,
        ("fedavg", "ef(topk)", None): 3,
        ("scaffold", "identity", None): 3,
        ("scaffold", "ef(topk)", None): 3,
        ("fedprox", "identity", 0.01): 3,
        ("fedprox", "identity", 0.1): 3,
        ("fedprox", "ef(topk)", 0.01): 3,
        ("fedprox", "ef(topk)", 0.1): 3,
    }
    assert {j.seed for j in g.jobs} == {0, 1, 2}
    assert all(j.config["task"]["hidden"] == [200, 200] for j in g.jobs)


AXES = (
    '[grid]\n"algorithm.name" = ["fedavg", "scaffold"]\n"compressor.name" = ["identity", "topk"]\n'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", {("fedavg", "identity", 0.05): 1}, id="empty grid: one default job"),
        pytest.param(
            "[experiment]\nseeds = 3\n", {("fedavg", "identity", 0.05): 3}, id="seed count"
        ),
        pytest.param(
            '[grid]\n"algorithm.lr" = [0.1, 0.2, 0.3]\n"compressor.name" = ["topk", "sign"]\n',
            {(a, c, lr): 1 for a in ["fedavg"] for c in ["topk", "sign"] for lr in [0.1, 0.2, 0.3]},
            id="2x3 axes",
        ),
        pytest.param(
            AXES + '[[variant]]\n"compressor.name" = "sign"\n',
            {
                ("fedavg", "identity", 0.05): 1,
                ("fedavg", "topk", 0.05): 1,
                ("scaffold", "identity", 0.05): 1,
                ("scaffold", "topk", 0.05): 1,
                # the override replaces the compressor axis; the algorithm axis remains
                ("fedavg", "sign", 0.05): 1,
                ("scaffold", "sign", 0.05): 1,
            },
            id="variant override wins over the grid axis",
        ),
        pytest.param(
            AXES + '"algorithm.lr" = [0.1, 0.2, 0.3]\n'
            '[[variant]]\n"algorithm.name" = "fedprox"\n"algorithm.lr" = [1.0, 2.0]\n',
            {
                **{
                    (a, c, lr): 1
                    for a in ["fedavg", "scaffold"]
                    for c in ["identity", "topk"]
                    for lr in [0.1, 0.2, 0.3]
                },
                # the variant's own axis replaces the grid's lr axis
                **{("fedprox", c, lr): 1 for c in ["identity", "topk"] for lr in [1.0, 2.0]},
            },
            id="variant axis replaces the grid axis on the same key",
        ),
        pytest.param(
            AXES + '[[variant]]\n"algorithm.name" = "ef21"\n"algorithm.lr" = 0.5\n'
            '[[variant]]\n"algorithm.name" = "fedprox"\n"algorithm.mu" = [0.0, 0.1]\n',
            {
                ("fedavg", "identity", 0.05): 1,
                ("fedavg", "topk", 0.05): 1,
                ("scaffold", "identity", 0.05): 1,
                ("scaffold", "topk", 0.05): 1,
                ("ef21", "identity", 0.5): 1,
                ("ef21", "topk", 0.5): 1,
                ("fedprox", "identity", 0.05): 2,
                ("fedprox", "topk", 0.05): 2,
            },
            id="two variants",
        ),
        pytest.param(
            '[[variant]]\n"algorithm.name" = "fedavg"\n',
            {("fedavg", "identity", 0.05): 1},
            id="a variant equal to the base merges with it",
        ),
        pytest.param(
            "[experiment]\nseeds = [4, 4, 7]\n", {("fedavg", "identity", 0.05): 2}, id="dup seeds"
        ),
    ],
)
def test_job_counts(text: str, expected: dict[tuple[Any, ...], int]) -> None:
    g = parse(text)
    assert configs(g) == Counter(expected)
    assert len(g.jobs) == sum(expected.values())
    assert len({j.key for j in g.jobs}) == len(g.jobs)


def test_seeds_as_list_and_count() -> None:
    assert [j.seed for j in parse("[experiment]\nseeds = 3\n").jobs] == [0, 1, 2]
    assert sorted(j.seed for j in parse("[experiment]\nseeds = [5, 2]\n").jobs) == [2, 5]
    assert [j.seed for j in parse("").jobs] == [0]


def test_list_valued_field_is_written_as_list_of_lists() -> None:
    g = parse('[task]\nmodel = "mlp"\n[grid]\n"task.hidden" = [[8], [16, 16]]\n')
    assert sorted(j.config["task"]["hidden"] for j in g.jobs) == [[8], [16, 16]]


# -- resolution -------------------------------------------------------------------------------


def expected_fields(config: dict[str, dict[str, Any]], section: str) -> set[str]:
    c = config[section]
    names = set(grid.COMMON[section])
    if section == "task":
        for reg, name in (
            (DATASETS, c["dataset"]),
            (MODELS, c["model"]),
            (PARTITIONS, c["partition"]),
        ):
            names |= set(reg[name].params)
    elif section == "algorithm":
        names |= set(ALGORITHMS[c["name"]].params)
    elif section in ("compressor", "downlink"):
        names |= set(COMPRESSORS[c["name"]].params)
    return names


def test_resolved_config_has_every_field_of_its_components() -> None:
    g = parse(
        '[task]\nmodel = "logreg"\n[grid]\n'
        '"algorithm.name" = ["fedavg", "fedprox", "scaffold", "ef21"]\n'
        '"compressor.name" = ["identity", "topk", "sign"]\n'
        '"task.partition" = ["iid", "dirichlet"]\n'
        '"downlink.name" = ["identity", "qsgd"]\n'
    )
    assert len(g.jobs) == 4 * 3 * 2 * 2
    for j in g.jobs:
        assert set(j.config) == set(grid.SECTIONS)
        for s in grid.SECTIONS:
            assert set(j.config[s]) == expected_fields(j.config, s), (s, j.config[s])
        # defaults are the registered ones
        alg = ALGORITHMS[j.algorithm]
        for k, p in alg.params.items():
            assert j.config["algorithm"][k] == p.default
        assert j.config["experiment"]["rounds"] == grid.COMMON["experiment"]["rounds"].default
        assert "seeds" not in j.config["experiment"]
        assert j.config["experiment"]["name"] == "g"  # the file's stem


def test_fields_of_other_components_are_dropped_and_jobs_merge() -> None:
    g = parse(
        '[grid]\n"compressor.name" = ["identity", "topk"]\n"compressor.ratio" = [0.01, 0.1]\n'
    )
    assert sorted((j.compressor, j.config["compressor"].get("ratio")) for j in g.jobs) == [
        ("identity", None),
        ("topk", 0.01),
        ("topk", 0.1),
    ]
    assert g.ignored == {"compressor.ratio": {"identity"}}

    g = parse('[algorithm]\nname = "fedavg"\nmu = 0.5\n')
    assert len(g.jobs) == 1 and "mu" not in g.jobs[0].config["algorithm"]
    assert g.ignored == {"algorithm.mu": {"fedavg"}}
    # ... and a dropped field does not change the key
    assert g.jobs[0].key == parse('[algorithm]\nname = "fedavg"\n').jobs[0].key


def test_error_feedback_dropped_for_identity_and_ef21() -> None:
    g = parse(
        "[compressor]\nerror_feedback = true\n[grid]\n"
        '"algorithm.name" = ["fedavg", "ef21"]\n"compressor.name" = ["identity", "topk"]\n'
    )
    ef = {
        (j.algorithm, j.config["compressor"]["name"]): j.config["compressor"]["error_feedback"]
        for j in g.jobs
    }
    assert ef == {
        ("fedavg", "identity"): False,
        ("fedavg", "topk"): True,
        ("ef21", "identity"): False,
        ("ef21", "topk"): False,
    }
    assert g.ignored["compressor.error_feedback"] == {"identity", "ef21"}
    # an error_feedback axis collapses where it means nothing
    g = parse(
        '[algorithm]\nname = "ef21"\n[compressor]\nname = "topk"\n'
        '[grid]\n"compressor.error_feedback" = [false, true]\n'
    )
    assert len(g.jobs) == 1


def test_synthetic_defaults_to_natural_partition() -> None:
    g = parse('[task]\ndataset = "synthetic"\nclients = 5\n')
    assert g.jobs[0].config["task"]["partition"] == "natural"
    explicit = parse('[task]\ndataset = "synthetic"\nclients = 5\npartition = "natural"\n')
    assert explicit.jobs[0].key == g.jobs[0].key
    # the dataset's own alpha (not dirichlet's) is understood
    assert (
        parse('[task]\ndataset = "synthetic"\nalpha = 0.5\n').jobs[0].config["task"]["alpha"] == 0.5
    )
    (line,) = problems('[task]\ndataset = "synthetic"\npartition = "iid"\n')
    assert line.startswith("g.toml: [task] task.partition")
    assert "synthetic" in line and "natural" in line


def test_test_fraction_zero_and_full_batch_are_allowed() -> None:
    j = parse('[task]\ntest_fraction = 0\n[algorithm]\nbatch_size = "full"\n').jobs[0]
    assert j.config["task"]["test_fraction"] == 0.0
    assert j.config["algorithm"]["batch_size"] == "full"


# -- keys -------------------------------------------------------------------------------------


def test_keys_are_stable_and_hex() -> None:
    text = (ROOT / "experiments" / "quickstart.toml").read_text(encoding="utf-8")
    a, b = grid.parse(text, Path("a.toml")), grid.parse(text, Path("b.toml"))
    assert [j.key for j in a.jobs] == [j.key for j in b.jobs]  # the path is not in the key
    assert all(re.fullmatch(r"[0-9a-f]{16}", j.key) for j in a.jobs)
    assert grid.load(ROOT / "experiments" / "quickstart.toml").jobs == a.jobs


def test_editing_a_variant_value_changes_only_its_jobs() -> None:
    text = (ROOT / "experiments" / "quickstart.toml").read_text(encoding="utf-8")
    assert '"algorithm.lr" = 0.5' in text
    before = {(j.algorithm, j.compressor, j.seed): j.key for j in parse(text).jobs}
    edited = text.replace('"algorithm.lr" = 0.5', '"algorithm.lr" = 0.4')
    after = {(j.algorithm, j.compressor, j.seed): j.key for j in parse(edited).jobs}
    assert before.keys() == after.keys()
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {k for k in before if k[0] == "ef21"}
    assert len(changed) == 4


def test_key_depends_on_seed_and_on_values() -> None:
    g = parse("[experiment]\nseeds = [0, 1]\n")
    assert g.jobs[0].config == g.jobs[1].config and g.jobs[0].key != g.jobs[1].key
    base = parse("").jobs[0].key
    assert parse("[algorithm]\nlr = 0.06\n").jobs[0].key != base
    assert parse("[experiment]\nrounds = 7\n").jobs[0].key != base
    # an explicit default, an int for a float, are the same resolved config
    assert parse("[algorithm]\nlr = 0.05\n").jobs[0].key == base
    assert parse('[task]\nreg = "none"\n').jobs[0].key == base
    assert (
        parse("[algorithm]\nlr = 1\n").jobs[0].key == parse("[algorithm]\nlr = 1.0\n").jobs[0].key
    )


# The keys of experiments/quickstart.toml's jobs as fedbench computed them before grid.py
# became the fedbench.grid package (issue 24): printed on main at cf905ba with
#   grid.load("experiments/quickstart.toml").jobs -> (j.algorithm, j.compressor, j.seed): j.key
# A change here re-runs every finished quickstart run of every user: it must be deliberate.
QUICKSTART_KEYS = {
    ("fedavg", "identity", 0): "db9c1121483c503d",
    ("fedavg", "identity", 1): "a9c044004db939e4",
    ("fedavg", "ef(topk)", 0): "2aeeaaf4b6047c83",
    ("fedavg", "ef(topk)", 1): "b80c25d0589953cd",
    ("scaffold", "identity", 0): "de5e080d5eb99e80",
    ("scaffold", "identity", 1): "5952e98e192e1b34",
    ("scaffold", "ef(topk)", 0): "65a786e38fec9947",
    ("scaffold", "ef(topk)", 1): "e0d612e456010437",
    ("ef21", "identity", 0): "667984e7868dd80c",
    ("ef21", "identity", 1): "3c1c78df32134aca",
    ("ef21", "topk", 0): "245f59ba7e10f4f8",
    ("ef21", "topk", 1): "f85ef9790bbbd2b5",
}


def test_quickstart_keys_are_pinned() -> None:
    g = grid.load(ROOT / "experiments" / "quickstart.toml")
    keys = {(j.algorithm, j.compressor, j.seed): j.key for j in g.jobs}
    assert keys == QUICKSTART_KEYS


ORDERED: dict[str, Any] = {
    "experiment": {"name": "order", "seeds": [0, 3], "rounds": 7, "eval_every": 2},
    "task": {
        "dataset": "digits",
        "model": "mlp",
        "hidden": [8],
        "clients": 6,
        "alpha": 0.3,
        "partition": "dirichlet",
    },
    "algorithm": {"name": "fedavg", "lr": 0.1, "local_steps": 2, "participation": 0.5},
    "compressor": {"name": "topk", "ratio": 0.1, "error_feedback": True},
    "grid": {"algorithm.name": ["fedavg", "scaffold"], "compressor.name": ["identity", "topk"]},
    "variant": [{"algorithm.name": "fedprox", "algorithm.mu": [0.0, 0.1]}],
}


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_keys_do_not_depend_on_field_order(data: st.DataObject) -> None:
    expected = {j.key for j in parse(to_toml(ORDERED)).jobs}
    assert len(expected) == (4 + 4) * 2
    sections = data.draw(st.permutations(list(ORDERED)))
    shuffled: dict[str, Any] = {}
    for s in sections:
        table = ORDERED[s]
        if s == "variant":
            shuffled[s] = [{k: v[k] for k in data.draw(st.permutations(list(v)))} for v in table]
        else:
            shuffled[s] = {k: table[k] for k in data.draw(st.permutations(list(table)))}
    assert {j.key for j in parse(to_toml(shuffled)).jobs} == expected


# -- errors -----------------------------------------------------------------------------------

ALG_NAMES = list(ALGORITHMS)
COMP_NAMES = list(COMPRESSORS)


@pytest.mark.parametrize(
    ("text", "must_contain"),
    [
        ("[experiment\nname = 1\n", ["invalid TOML"]),
        ("[foo]\na = 1\n", ["[foo]", "unknown section", "allowed", "experiment", "variant"]),
        ("[algorithm]\nlrr = 0.1\n", ["[algorithm] lrr", "unknown field", "allowed", "lr, "]),
        ("[task]\nclient = 3\n", ["[task] client", "unknown field", "clients"]),
        ('[grid]\n"algorithm.lrr" = [0.1]\n', ["[grid] algorithm.lrr", "unknown field", "allowed"]),
        ('[grid]\n"foo.lr" = [0.1]\n', ["[grid] foo.lr", '"section.field"', "algorithm"]),
        ('[grid]\n"lr" = [0.1]\n', ["[grid] lr", '"section.field"']),
        ('[[variant]]\n"algorithm.lrr" = 0.1\n', ["[[variant]] 1 algorithm.lrr", "unknown field"]),
        ('[grid]\n"algorithm.lr" = 0.1\n', ["[grid] algorithm.lr", "non-empty list"]),
        ('[grid]\n"algorithm.lr" = []\n', ["[grid] algorithm.lr", "non-empty list"]),
        ('[[variant]]\n"algorithm.lr" = []\n', ["[[variant]] 1 algorithm.lr", "non-empty list"]),
        ('[algorithm]\nlr = "fast"\n', ["[algorithm] algorithm.lr", '"fast"', "allowed: a number"]),
        ("[algorithm]\nlr = -1\n", ["[algorithm] algorithm.lr = -1", "allowed: a number > 0"]),
        ("[algorithm]\nlr = true\n", ["algorithm.lr", "allowed: a number"]),
        ("[algorithm]\nlr = [0.1, 0.2]\n", ["[algorithm] algorithm.lr", "allowed"]),
        ("[algorithm]\nparticipation = 0\n", ["algorithm.participation = 0", "> 0 and <= 1"]),
        ("[algorithm]\nparticipation = 1.5\n", ["algorithm.participation", "<= 1"]),
        ('[algorithm]\nbatch_size = "half"\n', ["algorithm.batch_size", '"full"']),
        ("[task]\nclients = 0\n", ["[task] task.clients = 0", "an integer >= 1"]),
        ("[task]\nclients = 2.5\n", ["task.clients", "an integer"]),
        ("[task]\ntest_fraction = 1\n", ["[task] task.test_fraction = 1", ">= 0 and < 1"]),
        ("[task]\ntest_fraction = -0.1\n", ["task.test_fraction", ">= 0"]),
        ('[task]\ninit = "ones"\n', ["task.init", "'default', 'zeros'"]),
        ("[task]\nhidden = 3\n", ["task.hidden", "a list of positive integers"]),
        ('[compressor]\nerror_feedback = "yes"\n', ["compressor.error_feedback", "true or false"]),
        ("[experiment]\nrounds = 0\n", ["[experiment] experiment.rounds = 0", ">= 1"]),
        ('[algorithm]\nname = "fedsgd"\n', ["algorithm.name", "fedsgd", *ALG_NAMES]),
        ('[grid]\n"algorithm.name" = ["fedavg", "nope"]\n', ["[grid] algorithm.name", "nope"]),
        ('[compressor]\nname = "zip"\n', ["[compressor] compressor.name", "zip", *COMP_NAMES]),
        ('[downlink]\nname = "zip"\n', ["[downlink] downlink.name", "zip", *COMP_NAMES]),
        ('[task]\ndataset = "cifar"\n', ["[task] task.dataset", "cifar", *DATASETS]),
        ('[task]\nmodel = "vit"\n', ["[task] task.model", "vit", *MODELS]),
        ('[task]\npartition = "weird"\n', ["[task] task.partition", "weird", *PARTITIONS]),
        (
            '[algorithm]\nname = "ef21"\n[compressor]\nname = "qsgd"\n',
            ["[compressor] compressor.name", "qsgd", "ef21", "contractive", "topk"],
        ),
        (
            '[algorithm]\nname = "ef21"\n[compressor]\nname = "randk"\n',
            ["compressor.name", "randk", "contractive", "unbiased = false"],
        ),
        (
            '[algorithm]\nname = "ef21"\n[grid]\n"compressor.name" = ["topk", "qsgd"]\n',
            ["[grid] compressor.name", "qsgd", "contractive"],
        ),
        (
            '[grid]\n"algorithm.name" = ["fedavg", "ef21"]\n'
            '[[variant]]\n"compressor.name" = "natural"\n',
            ["[[variant]] 1 compressor.name", "natural", "contractive"],
        ),
        (
            "[task]\nclients = 10\n[algorithm]\nparticipation = 0.01\n",
            ["algorithm.participation", "fewer than one", "allowed: >= 0.1"],
        ),
        ("[experiment]\nseeds = 0\n", ["[experiment] seeds", "allowed", "count >= 1"]),
        ("[experiment]\nseeds = []\n", ["[experiment] seeds", "non-empty list"]),
        ("[experiment]\nseeds = [-1]\n", ["[experiment] seeds", "integers >= 0"]),
        ("[experiment]\nseeds = [1.5]\n", ["[experiment] seeds", "allowed"]),
        ('[experiment]\nseeds = "3"\n', ["[experiment] seeds", "allowed"]),
        ('[grid]\n"experiment.seeds" = [[0], [1]]\n', ["[grid] experiment.seeds", "seeds"]),
        ("task = 3\n", ["task", "table"]),
        ("grid = 3\n", ["[grid]", "table"]),
        ("variant = 3\n", ["[[variant]]"]),
        ("variant = [1]\n", ["[[variant]] 1", "table"]),
    ],
)
def test_bad_grid_is_one_clear_line(text: str, must_contain: list[str]) -> None:
    lines = problems(text)
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith("g.toml: "), line
    assert "\n" not in line
    for part in must_contain:
        assert part in line, (part, line)


def test_valid_randk_for_ef21_when_contractive() -> None:
    g = parse('[algorithm]\nname = "ef21"\n[compressor]\nname = "randk"\nunbiased = false\n')
    assert g.jobs[0].compressor == "randk"


def test_several_problems_are_reported_together() -> None:
    lines = problems('[algorithm]\nlr = -1\n[task]\nclients = 0\n[compressor]\nname = "zip"\n')
    assert len(lines) == 3
    assert any("algorithm.lr = -1" in x for x in lines)
    assert any("task.clients = 0" in x for x in lines)
    assert any("compressor.name" in x and "zip" in x for x in lines)
    lines = problems('[foo]\n[bar]\n[algorithm]\nlrr = 1\n[grid]\n"x.y" = [1]\n')
    assert len(lines) == 4 and all(x.startswith("g.toml: ") for x in lines)
    # one line per bad value of an axis, not one per job it appears in
    lines = problems(
        '[experiment]\nseeds = 3\n[grid]\n"algorithm.lr" = [0.1, -1, "x"]\n'
        '"compressor.name" = ["identity", "topk", "sign"]\n'
    )
    assert sorted(lines) == [
        'g.toml: [grid] algorithm.lr = "x": allowed: a number > 0',
        "g.toml: [grid] algorithm.lr = -1: allowed: a number > 0",
    ]


def test_unknown_field_and_bad_value_reported_together() -> None:
    lines = problems("[algorithm]\nlrr = 0.1\n[task]\nclients = 0\n")
    assert any("lrr" in x for x in lines)
    assert any("task.clients = 0" in x for x in lines)


def test_readme_bad_grid_example_reports_both_lines() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = [
        line.removeprefix("error: ")
        for line in readme.split("$ fedbench run bad.toml\n", 1)[1].split("```", 1)[0].splitlines()
        if line.startswith("error: ")
    ]
    assert len(shown) == 2
    text = (
        '[algorithm]\nname = "ef21"\nlr = -0.1\n[compressor]\nname = "topk"\n'
        '[grid]\n"compressor.name" = ["topk", "qsgd"]\n'
    )
    with pytest.raises(grid.GridError) as e:
        grid.parse(text, Path("bad.toml"))
    assert e.value.problems == shown


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(grid.GridError) as e:
        grid.load(path)
    (line,) = e.value.problems
    assert line.startswith(f"{path}: ") and "cannot read" in line


def test_load_reads_the_file_and_names_the_experiment_after_it(tmp_path: Path) -> None:
    path = tmp_path / "my-exp.toml"
    text = '[grid]\n"algorithm.lr" = [0.1, 0.2]\n'
    path.write_text(text, encoding="utf-8")
    g = grid.load(path)
    assert g.path == path and g.text == text and g.name == "my-exp"
    assert [j.key for j in g.jobs] == [j.key for j in grid.parse(text, Path("my-exp.toml")).jobs]
    path.write_text("[algorithm]\nlr = -1\n", encoding="utf-8")
    with pytest.raises(grid.GridError) as e:
        grid.load(path)
    assert e.value.problems[0].startswith(f"{path}: [algorithm] algorithm.lr = -1")


# -- --only and labels --------------------------------------------------------------------------

FILTERABLE = (
    "[experiment]\nseeds = 2\n[grid]\n"
    '"algorithm.name" = ["fedavg", "scaffold"]\n'
    '"compressor.name" = ["identity", "topk"]\n'
    '"compressor.ratio" = [0.01, 0.1]\n'
)


def test_filter_jobs() -> None:
    jobs = parse(FILTERABLE).jobs
    assert len(jobs) == 2 * 3 * 2
    kept = grid.filter_jobs(jobs, ["algorithm.name=fedavg", "compressor.ratio=0.1"])
    assert len(kept) == 2
    assert {(j.algorithm, j.compressor, j.config["compressor"]["ratio"]) for j in kept} == {
        ("fedavg", "topk", 0.1)
    }
    assert {j.seed for j in kept} == {0, 1}
    assert grid.filter_jobs(jobs, []) == jobs
    assert len(grid.filter_jobs(jobs, ["algorithm.name=scaffold"])) == 6
    assert len(grid.filter_jobs(jobs, ['algorithm.name="scaffold"'])) == 6
    assert len(grid.filter_jobs(jobs, ["experiment.seed=1"])) == 6
    assert grid.filter_jobs(jobs, ["algorithm.name=fedprox"]) == []
    assert len(grid.filter_jobs(jobs, ["compressor.error_feedback=false"])) == 12
    hidden = parse('[grid]\n"task.hidden" = [[8], [16, 16]]\n').jobs
    (j,) = grid.filter_jobs(hidden, ["task.hidden=[16, 16]"])
    assert j.config["task"]["hidden"] == [16, 16]


@pytest.mark.parametrize("bad", ["algorithm.name", "name=fedavg", "=fedavg"])
def test_filter_jobs_malformed(bad: str) -> None:
    with pytest.raises(grid.GridError) as e:
        grid.filter_jobs(parse("").jobs, [bad])
    (line,) = e.value.problems
    assert "--only" in line and "section.field=value" in line


def test_job_labels_name_only_what_differs() -> None:
    g = parse(FILTERABLE)
    labels = grid.job_labels(g.jobs)
    assert set(labels) == {j.key for j in g.jobs}
    assert set(labels.values()) == {
        "fedavg identity",
        "scaffold identity",
        "fedavg topk ratio=0.01",
        "fedavg topk ratio=0.1",
        "scaffold topk ratio=0.01",
        "scaffold topk ratio=0.1",
    }
    # seeds share a label
    by_label = Counter(labels.values())
    assert set(by_label.values()) == {2}
    # one configuration: its algorithm
    single = parse('[algorithm]\nname = "scaffold"\n').jobs
    assert list(grid.job_labels(single).values()) == ["scaffold"]
    ef = parse('[compressor]\nname = "topk"\n[grid]\n"compressor.error_feedback" = [false, true]\n')
    ef_labels = {
        j.config["compressor"]["error_feedback"]: grid.job_labels(ef.jobs)[j.key] for j in ef.jobs
    }
    # error feedback is spelled as the compressor's name, as in `ls` and `report`
    assert ef_labels == {True: "ef(topk)", False: "topk"}


@pytest.mark.parametrize(
    "text",
    [
        FILTERABLE,
        readme_grid(),
        (ROOT / "experiments" / "quickstart.toml").read_text(encoding="utf-8"),
        '[grid]\n"downlink.name" = ["identity", "topk"]\n"algorithm.batch_size" = [8, "full"]\n'
        '"task.hidden" = [[8], [16, 16]]\n"algorithm.server_opt" = ["sgd", "adam"]\n',
    ],
    ids=["filterable", "readme", "quickstart", "mixed"],
)
def test_distinct_configurations_get_distinct_labels(text: str) -> None:
    g = parse(text)
    labels = grid.job_labels(g.jobs)
    by_label: dict[str, set[str]] = {}
    for j in g.jobs:
        by_label.setdefault(labels[j.key], set()).add(json.dumps(j.config, sort_keys=True))
    assert all(len(v) == 1 for v in by_label.values()), by_label

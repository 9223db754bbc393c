"""A grid that validates runs (issue 23): every registered algorithm at its defaults on five
small tasks either is refused by `fedbench validate` in one line or runs to done/diverged, never
failed; and the model facts the components declare (Component.check) match the built models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedbench import grid, runner
from fedbench.algorithms import ALGORITHMS
from fedbench.algorithms.dadao import smoothness_known
from fedbench.algorithms.dipaco import depth_units, levels_of
from fedbench.algorithms.ef21_rare import RARE_MODELS
from fedbench.models import MODELS, build_model
from fedbench.store import Store

# the four small tasks of issue 23 and one computed on demand, each as small as its model allows
# (2 rounds are run)
TASKS = {
    "digits_logreg": '[task]\ndataset = "digits"\nmodel = "logreg"\nclients = 3\n',
    "digits_mlp": '[task]\ndataset = "digits"\nmodel = "mlp"\nhidden = [8]\nclients = 3\n',
    "text_transformer_1_layer": (
        '[task]\ndataset = "grammar_text"\nchars = 3000\ncontext = 8\nmodel = "transformer"\n'
        "layers = 1\nwidth = 8\nheads = 2\nclients = 3\n"
    ),
    "quadratic_game": '[task]\ndataset = "quadratic_game"\nclients = 3\ndim = 3\n'
    "samples_per_client = 4\n",
    # samples computed on demand (data.lazy): every method's data access goes through LazyRows
    "lazy_synthetic_logreg": '[task]\ndataset = "synthetic"\ngenerator = 3\nmax_samples = 60\n'
    'clients = 3\nmodel = "logreg"\n',
}

# (task, algorithm) pairs that validation refuses at defaults, with a word of the one line
# that says why; every other pair must validate
REFUSED = {
    **{(t, "dadao"): "algorithm.mu" for t in TASKS},  # μ = "auto" needs reg = "l2"
    **{(t, "ef21_rare"): "algorithm.lr" for t in TASKS},  # (L₊, c) of linear regression only
    ("digits_logreg", "dipaco"): "algorithm.levels",  # 2 levels of a 1-layer model
    ("lazy_synthetic_logreg", "dipaco"): "algorithm.levels",
    ("lazy_synthetic_logreg", "fedbr"): "algorithm.name",
    ("text_transformer_1_layer", "dipaco"): "algorithm.levels",
    ("quadratic_game", "dipaco"): "algorithm.levels",
    ("digits_logreg", "fedbr"): "algorithm.name",  # needs a feature layer
    ("quadratic_game", "fedbr"): "algorithm.name",
    ("text_transformer_1_layer", "fedbr"): "algorithm.name",  # perturbs continuous inputs
    ("text_transformer_1_layer", "wafl"): "algorithm.name",
    **{(t, "noloco"): "algorithm.group_size" for t in TASKS},  # groups of 2 of 3 clients
}


def job_of(task: str, algorithm: str) -> grid.Job:
    """The one job of `algorithm` at its defaults on `task`; GridError when it does not
    validate. batch_size 4 (a field of every method, not the method's own) keeps it small."""
    text = (
        '[experiment]\nname = "defaults"\nrounds = 2\neval_every = 1\n'
        f'{TASKS[task]}[algorithm]\nname = "{algorithm}"\nbatch_size = 4\n'
    )
    (job,) = grid.parse(text, Path(f"{task}.toml")).jobs
    return job


@pytest.mark.parametrize("task", TASKS)
def test_every_algorithm_at_its_defaults_that_validates_does_not_fail(
    task: str, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    store = Store(f"sqlite:///{tmp_path / 'defaults.db'}")
    exp = store.upsert_experiment(f"defaults-{task}", "defaults.toml", "")
    refused, outcomes = {}, {}
    for name in ALGORITHMS:
        try:
            job = job_of(task, name)
        except grid.GridError as e:
            assert all("\n" not in line for line in e.problems)  # one line per problem
            refused[name] = e.problems[0]
            continue
        store.ensure_runs(exp, [runner.run_spec(job)])
        outcomes[name] = runner.execute(job, store, torch.device("cpu"))
    failed = {n: (o.error or "").splitlines()[:1] for n, o in outcomes.items()}
    failed = {n: e for n, e in failed.items() if outcomes[n].status not in ("done", "diverged")}
    assert failed == {}, "validated, then failed at run time"
    assert all(o.rounds == 2 for o in outcomes.values() if o.status == "done")
    want = {a: why for (t, a), why in REFUSED.items() if t == task}
    assert set(refused) == set(want), refused
    for name, line in refused.items():  # "FILE: [algorithm] section.field = value: why"
        assert line.startswith(f"{task}.toml: [algorithm] {want[name]}"), line
    assert set(refused) | set(outcomes) == set(ALGORITHMS)


def test_the_refusals_name_what_would_work() -> None:
    with pytest.raises(grid.GridError) as e:
        job_of("digits_mlp", "dadao")
    assert 'allowed: mu = a number > 0, or [task] reg = "l2" with lam > 0' in e.value.problems[0]
    with pytest.raises(grid.GridError) as e:
        job_of("digits_logreg", "dipaco")
    assert "model logreg has 1 layer; allowed: levels <= 1" in e.value.problems[0]
    with pytest.raises(grid.GridError) as e:
        job_of("quadratic_game", "ef21_rare")
    assert e.value.problems[0].endswith(
        "allowed: lr = a number > 0, or model = linreg, robust_linreg"
    )


def test_a_refusal_lifts_when_the_task_provides_what_is_needed() -> None:
    base = '[experiment]\nrounds = 2\n[algorithm]\nname = "{}"\n'
    text = '[task]\ndataset = "digits"\nmodel = "logreg"\nreg = "l2"\nlam = 0.1\n'
    assert grid.parse(text + base.format("dadao"), Path("g.toml")).jobs  # μ = λ, L known
    text = '[task]\ndataset = "digits"\nmodel = "mlp"\nreg = "l2"\n'
    with pytest.raises(grid.GridError) as e:  # μ = λ now, but the MLP's L is not known
        grid.parse(text + base.format("dadao"), Path("g.toml"))
    assert [p.split(" ")[2] for p in e.value.problems] == ["algorithm.L"]
    assert grid.parse(text + base.format("dadao") + "L = 5.0\n", Path("g.toml")).jobs
    text = '[task]\ndataset = "grammar_text"\nmodel = "transformer"\nlayers = 2\n'
    assert grid.parse(text + base.format("dipaco"), Path("g.toml")).jobs
    text = '[task]\ndataset = "quadratic"\n'  # linreg by default
    assert grid.parse(text + base.format("ef21_rare"), Path("g.toml")).jobs
    text = '[task]\ndataset = "digits"\n'
    assert grid.parse(text + base.format("ef21_rare") + "lr = 0.1\n", Path("g.toml")).jobs


# -- the model facts behind the checks, pinned against the built models ---------------------

# (model, its [task] fields, input shape, classes) for every registered model
SHAPES = {
    "logreg": ({}, (6,), 3),
    "mlp": ({"hidden": [5, 4]}, (6,), 3),
    "cnn": ({"channels": [4], "hidden": [5]}, (1, 8, 8), 3),
    "resnet": ({"depth": 8, "width": 4}, (3, 8, 8), 3),
    "linreg": ({}, (7,), 1),
    "robust_linreg": ({}, (7,), 1),
    "quadratic_game": ({}, (7,), 1),
    "transformer": ({"layers": 3, "width": 8, "heads": 2, "context": 4}, (4,), 11),
}
CASES = [(m, f) for m, (f, _, _) in SHAPES.items()] + [
    ("mlp", {"hidden": []}),
    ("transformer", {"layers": 1, "width": 8, "heads": 2, "context": 4}),
]


def test_every_registered_model_is_covered() -> None:
    assert set(SHAPES) == set(MODELS)


@pytest.mark.parametrize(("model", "fields"), CASES)
def test_declared_model_facts_match_the_built_model(model: str, fields: dict) -> None:
    _, shape, classes = SHAPES[model]
    built = build_model(model, fields, shape, classes)
    task = {"model": model, **MODELS[model].resolve(fields)}
    known = built.curvature is not None or hasattr(built, "smoothness_constants")
    assert smoothness_known(task) == known
    assert (model in RARE_MODELS) == hasattr(built, "rare_constants")
    units = depth_units(task)
    if units is None:  # not declared: dipaco's run-time refusal stays the only check
        assert model == "resnet"
        return
    with pytest.raises(ValueError, match=f"the model has {units[0]}$"):
        levels_of(built, units[0] + 1)
    assert int(levels_of(built, units[0]).max()) == units[0] - 1


@pytest.mark.parametrize("name", ["diana_rr", "fedbr", "wafl"])
def test_methods_that_draw_minibatches_refuse_full_batches_at_validation(name: str) -> None:
    """They raised at run time (a grid that validated, then failed); now validation refuses."""
    text = (
        '[task]\ndataset = "digits"\nmodel = "mlp"\nhidden = [8]\n'
        f'[algorithm]\nname = "{name}"\nbatch_size = "full"\n'
    )
    with pytest.raises(grid.GridError) as e:
        grid.parse(text, Path("g.toml"))
    (line,) = e.value.problems
    assert line.startswith('g.toml: [algorithm] algorithm.batch_size = "full": ' + name)
    assert line.endswith("allowed: a whole number of samples")
    assert grid.parse(text.replace('"full"', "8"), Path("g.toml")).jobs

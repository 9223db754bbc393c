"""Resolution of one job: defaults filled in for its chosen components, every value checked
against its Param, and the checks across fields (compressor kind, dataset and model, sampling,
availability, privacy...) that no single field can make. Lines start with "section.field"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedbench.algorithms import ALGORITHMS
from fedbench.compressors import COMPRESSORS, compressor_kind
from fedbench.data import DATASETS, PARTITIONS
from fedbench.grid.schema import (
    COMMON,
    OPTIONAL_SECTIONS,
    SECTIONS,
    GridError,
    _components,
    _show,
    dataset_name,
    did_you_mean,
)
from fedbench.models import MODELS
from fedbench.params import Param
from fedbench.privacy import check as privacy_check
from fedbench.sampling import COHORT_SAMPLINGS


def resolve(
    cfg: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
    """Defaults filled in and every value checked. Returns (resolved config, dropped fields ->
    the components that ignore them). Raises GridError whose lines start with "section.field"."""
    problems: list[str] = []
    out: dict[str, dict[str, Any]] = {}
    dropped: dict[str, set[str]] = {}
    for s in SECTIONS:
        given = cfg.get(s, {})
        sec: dict[str, Any] = {}
        params: dict[str, Param] = dict(COMMON[s])
        if s == "task" and "partition" not in given:
            ds = DATASETS.get(dataset_name(str(given.get("dataset", "digits"))))
            if ds is not None and "default_partition" in ds.extra:
                params["partition"] = _with_default(
                    params["partition"], ds.extra["default_partition"]
                )
        if s == "task" and "model" not in given:  # generated regression / game datasets
            ds = DATASETS.get(dataset_name(str(given.get("dataset", "digits"))))
            if ds is not None and "default_model" in ds.extra:
                params["model"] = _with_default(params["model"], ds.extra["default_model"])
        for k, p in params.items():
            sec[k] = _check(s, k, given.get(k, p.default), p, problems)
        if s == "experiment":
            out[s] = sec
            continue
        merged = {**given, **sec}
        chosen: list[str] = []
        for reg, name in _components(s, merged):
            if name not in reg:
                field_name = _NAME_FIELD.get(reg.what, "name")
                problems.append(
                    f"{s}.{field_name} = {_show(merged.get(field_name))}: unknown {reg.what}"
                    f"{did_you_mean(str(merged.get(field_name)), reg)}; allowed: {', '.join(reg)}"
                )
                continue
            chosen.append(name)
            for k, p in reg[name].params.items():
                sec[k] = _check(s, k, given.get(k, p.default), p, problems)
        for k in given:
            if k not in sec:
                dropped.setdefault(f"{s}.{k}", set()).update(chosen)
        out[s] = sec
    for s in OPTIONAL_SECTIONS:  # only when the grid names the section
        if s in cfg:
            given = cfg[s]
            out[s] = {
                k: _check(s, k, given.get(k, p.default), p, problems) for k, p in COMMON[s].items()
            }
    alg = ALGORITHMS.get(out["algorithm"]["name"])
    if (
        alg is not None
        and not alg.extra.get("error_feedback", True)
        and out["compressor"]["error_feedback"]
    ):
        out["compressor"]["error_feedback"] = False  # the method has its own error feedback
        dropped.setdefault("compressor.error_feedback", set()).add(alg.name)
    up = COMPRESSORS.get(out["compressor"]["name"])
    if up is not None and up.kind == "exact" and out["compressor"]["error_feedback"]:
        out["compressor"]["error_feedback"] = False  # nothing is lost, nothing to feed back
        dropped.setdefault("compressor.error_feedback", set()).add(up.name)
    bad = {p.split(" ", 1)[0] for p in problems}  # fields whose value was refused
    _cross_checks(out, bad, problems)
    if problems:
        raise GridError(problems)
    return out, dropped


_NAME_FIELD = {"dataset": "dataset", "model": "model", "partition": "partition"}


def _with_default(p: Param, default: Any) -> Param:
    return Param(default, p.help, p.kind, p.choices, p.low, p.high, p.low_open, p.high_open)


def _check(section: str, key: str, value: Any, p: Param, problems: list[str]) -> Any:
    try:
        return p.check(value)
    except ValueError as e:
        problems.append(f"{section}.{key} = {_show(value)}: {e}".replace(f"got {value!r}; ", ""))
        return p.default


def _system_checks(alg: Any, cfg: dict[str, dict[str, Any]], problems: list[str]) -> None:
    """Sampling strategies, availability and deadlines only with methods that implement them."""
    a = cfg["algorithm"]
    # methods that draw their own clients (not through sample_cohort) declare
    # extra["availability"] = False: availability does not reach them, so dropouts or windows
    # refuse them (issue 13); asynchronous methods (extra["own_cohort"]) take availability
    own = not alg.extra.get("availability", True)
    # asynchronous methods draw their workers themselves (uniform among the idle and present)
    ok = (
        ("uniform",)
        if own or alg.extra.get("own_cohort", False)
        else (*COHORT_SAMPLINGS, *alg.extra.get("sampling", ()))
    )
    if a["sampling"] not in ok:
        fit = [k for k in ALGORITHMS if a["sampling"] in ALGORITHMS[k].extra.get("sampling", ())]
        problems.append(
            f"algorithm.sampling = {_show(a['sampling'])}: {alg.name} allows {', '.join(ok)}; "
            f"{a['sampling']} is implemented by {', '.join(fit)}"
        )
    net = cfg.get("network")
    if net is None:
        return
    if net["deadline_s"] > 0 and not alg.extra.get("deadline", False):
        fit = [k for k in ALGORITHMS if ALGORITHMS[k].extra.get("deadline", False)]
        problems.append(
            f"network.deadline_s = {net['deadline_s']}: {alg.name} does not implement a round "
            f"deadline; allowed with: {', '.join(fit)}"
        )
    windows = net["window_period"] > 0 and net["window_on"] < 1.0
    if (net["dropout_prob"] > 0 or windows) and own:
        problems.append(
            f"network.dropout_prob / window_period: {alg.name} draws its own clients and ignores "
            "availability; use a method that samples cohorts (e.g. fedavg, mifa)"
        )


def downlink_kinds(alg: Any) -> tuple[str, ...] | None:
    """The kinds of downlink compressor a method admits (`extra["downlink"]`: a kind or a
    tuple of kinds), None for any. Methods whose downlink is their own declare ("exact",), so
    that a configured downlink they would never apply is refused instead of labelling their
    results (asynchronous, gossip, all-reduce methods); others the kinds their paper
    analyses (EF21-BC: a contractive C_M)."""
    kinds = alg.extra.get("downlink")
    if kinds is None:
        return None
    return (kinds,) if isinstance(kinds, str) else tuple(kinds)


def downlink_check(alg: Any, down: Mapping[str, Any]) -> list[str]:
    """The configured downlink (`down`: the resolved [downlink] section) against what the
    method admits: one line naming the compressors it does, with the method's reason
    (`extra["downlink_why"]`), or nothing."""
    kinds = downlink_kinds(alg)
    if kinds is None or down["name"] not in COMPRESSORS:
        return []
    kind = compressor_kind(down["name"], down)
    if kind in kinds:
        return []
    why = alg.extra.get("downlink_why", f"needs a {' or '.join(kinds)} downlink compressor")
    is_kind = "" if kinds == ("exact",) else f"; {down['name']} is {kind}"
    return [
        f"downlink.name = {_show(down['name'])}: {alg.name} {why}{is_kind}; "
        f"allowed: {_allowed(kinds)}"
    ]


def _allowed(kinds: tuple[str, ...]) -> str:
    """The compressors of `kinds`, as a refusal lists them (randk is unbiased by default and
    contractive with `unbiased = false`)."""
    fitting = [c for c in COMPRESSORS if COMPRESSORS[c].kind in kinds]
    hint = " (or randk with unbiased = false)" if "contractive" in kinds else ""
    return f"{', '.join(fitting)}{hint}"


def _cross_checks(cfg: dict[str, dict[str, Any]], bad: set[str], problems: list[str]) -> None:
    """Checks across fields, skipped where a field involved was itself refused."""
    alg = ALGORITHMS.get(cfg["algorithm"]["name"])
    up = cfg["compressor"]
    if alg is not None and up["name"] in COMPRESSORS and not bad & {"compressor.unbiased"}:
        kind = compressor_kind(up["name"], up)
        if alg.requires != "any" and kind not in ("exact", alg.requires):
            problems.append(
                f"compressor.name = {_show(up['name'])}: {alg.name} needs a {alg.requires} "
                f"compressor and {up['name']} is {kind}; allowed: "
                + _allowed(("exact", alg.requires))
            )
    if alg is not None and not any(b.startswith("downlink.") for b in bad):
        problems.extend(downlink_check(alg, cfg["downlink"]))
    task = cfg["task"]
    ds = DATASETS.get(dataset_name(task["dataset"]))
    if ds is not None and "task.partition" not in bad:
        allowed_parts = ds.extra.get("partitions", tuple(PARTITIONS))
        if task["partition"] not in allowed_parts:
            problems.append(
                f"task.partition = {_show(task['partition'])}: dataset {ds.name} allows "
                f"{', '.join(allowed_parts)}"
            )
    model = MODELS.get(str(task["model"]))
    if ds is not None and model is not None:  # token sequences need a language model
        seq, lm = bool(ds.extra.get("sequences")), bool(model.extra.get("sequences"))
        if seq != lm:
            lms = ", ".join(k for k in MODELS if MODELS[k].extra.get("sequences"))
            why = f"holds token sequences; allowed: {lms}" if seq else "has no token sequences"
            problems.append(f"task.model = {_show(task['model'])}: dataset {ds.name} {why}")
    if ds is not None and model is not None:  # packed regression / game rows need their model
        want, has = ds.extra.get("target"), model.extra.get("target")
        if want != has:
            fits = ", ".join(k for k in MODELS if MODELS[k].extra.get("target") == want)
            problems.append(
                f"task.model = {_show(task['model'])}: dataset {ds.name} needs "
                + (f"one of {fits}" if want else "a classification model")
            )
    if alg is not None:
        _system_checks(alg, cfg, problems)
    if "privacy" in cfg and not any(b.startswith("privacy.") for b in bad):
        problems.extend(privacy_check(cfg))  # refusals that would void the DP guarantee
    continuous = alg is not None and alg.extra.get("continuous_inputs")  # issue 16: wafl
    if continuous and ds is not None and ds.extra.get("sequences"):
        problems.append(
            f"algorithm.name = {_show(cfg['algorithm']['name'])}: perturbs continuous inputs; "
            f"dataset {ds.name} holds token sequences"
        )
    models = alg.extra.get("models") if alg is not None else None  # issue 16: fedbr
    if models and model is not None and model.name not in models:
        problems.append(
            f"algorithm.name = {_show(cfg['algorithm']['name'])}: needs a feature layer before "
            f"a linear classifier; model {model.name}; allowed: {', '.join(models)}"
        )
    a = cfg["algorithm"]
    if a["ordering"] != "random" and a["batch_size"] == "full":  # issue 16: curricula
        problems.append(
            f"algorithm.ordering = {_show(a['ordering'])}: orders minibatches; with "
            'batch_size = "full" every step uses all the data; allowed: "random"'
        )
    elif a["ordering"] != "random" and alg is not None and "local_steps" not in alg.params:
        problems.append(  # every method with local steps draws them through local_batches
            f"algorithm.ordering = {_show(a['ordering'])}: orders the minibatches of local "
            f'steps; {a["name"]} takes no local steps; allowed: "random"'
        )
    if not bad:  # what each chosen component declares it needs (Component.check)
        for s in ("task", "algorithm", "compressor", "downlink"):
            for reg, name in _components(s, cfg[s]):
                comp = reg.get(name)
                if comp is not None and comp.check is not None:
                    problems.extend(comp.check(cfg))
    if not bad & {"algorithm.participation", "task.clients"}:
        p, n = cfg["algorithm"]["participation"], task["clients"]
        if p * n < 0.5:
            problems.append(
                f"algorithm.participation = {p}: fewer than one of {n} clients per round; "
                f"allowed: >= {1 / n:.3g}"
            )

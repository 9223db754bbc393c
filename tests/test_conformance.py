"""`fedbench check` (issue 27): built-ins pass; deliberately broken plugins fail on the property
they break, with a clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedbench import conformance, plugins
from fedbench.algorithms import ALGORITHMS
from fedbench.compressors import COMPRESSORS

# a representative subset by default; the whole registry under `slow`
FAST = ["fedavg", "fedprox", "scaffold", "ef21", "diana", "marina"]
FAST_COMPRESSORS = ["identity", "topk", "qsgd", "randk"]

BASE = """
from typing import Any, NamedTuple
import torch
from fedbench.api import (ALGORITHMS, LOCAL_PARAMS, Algorithm, Component, broadcast,
    broadcast_init, cohort_log, local_sgd, sample_cohort, update_compressor)

class S(NamedTuple):
    x: Any
    down: Any
    up: Any

def build(lr, local_steps):
    def init(x0, env, rng):
        return S(x0, broadcast_init(env, x0), update_compressor(env).init(env.n, env.d, env.device))

    def round(s, env, rng):
        ids = sample_cohort(env, rng)
        down, bd = broadcast(env, s.x, s.down, rng("downlink"))
        y, loss = local_sgd(env, down.x_hat, ids, local_steps, lr, rng("batches"))
        c = update_compressor(env)
        msg, up = c.compress(y - down.x_hat, ids, s.up, rng("uplink"))
        {body}
        return S(x, down, up), cohort_log(env, msg.bits, ids.numel(), bd, loss)

    return Algorithm(init, round, lambda s: s.x)

ALGORITHMS.add(Component("{name}", build, dict(LOCAL_PARAMS), "broken on purpose"{extra}))
"""

BROKEN = {
    "uncounted": (
        "extra, up = c.compress(y - down.x_hat, ids, up, rng('extra'))\n"
        "        x = s.x + 0.5 * (msg.value.mean(0) + extra.value.mean(0))",
        "",
        "bits counted",
    ),
    "noisy": (
        "x = s.x + msg.value.mean(0) + 1e-3 * torch.randn(env.d)",
        "",
        "deterministic per seed",
    ),
    # the broadcast counted once for the whole cohort, not per receiving client
    "down_once": (
        "x = s.x + msg.value.mean(0)\n        bd = bd // ids.numel()",
        "",
        "downlink bits counted",
    ),
    "down_uncounted": ("x = s.x + msg.value.mean(0)\n        bd = 0", "", "downlink bits counted"),
    "false_case": (
        "x = s.x + 0.9 * msg.value.mean(0)",
        ', extra={"reduces_to": ("fedavg", {})}',
        "reduces to fedavg",
    ),
}


@pytest.mark.parametrize("alg", FAST)
def test_built_in_methods_conform(alg: str) -> None:
    bad = [r.line() for r in conformance.check(alg, full=False) if not r.ok]
    assert not bad, bad


@pytest.mark.parametrize("comp", FAST_COMPRESSORS)
def test_built_in_compressors_conform(comp: str) -> None:
    bad = [r.line() for r in conformance.check(comp) if not r.ok]
    assert not bad, bad


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted({*ALGORITHMS, *COMPRESSORS} - {*FAST, *FAST_COMPRESSORS}))
def test_every_registered_component_conforms(name: str) -> None:
    bad = [r.line() for r in conformance.check(name, full=False) if not r.ok]
    assert not bad, bad


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_fails_on_the_property_it_breaks(tmp_path: Path, case: str) -> None:
    body, extra, failing = BROKEN[case]
    name = f"broken_{case}"
    path = tmp_path / f"{name}.py"
    path.write_text(BASE.replace("{body}", body).replace("{name}", name).replace("{extra}", extra))
    plugin = plugins.load(str(path))
    try:
        results = conformance.check(name, full=False)
    finally:
        plugins._forget(plugin)
    failed = [r for r in results if not r.ok]
    names = [r.name.split(" at ")[0] for r in failed]
    # a nondeterministic method also resumes to another model: its first failure names it
    assert names[:1] == [failing], [r.line() for r in results]
    assert set(names) <= {failing, "checkpoint round trip"}
    assert failed[0].line().startswith(f"FAIL {failing}")
    if failing == "downlink bits counted":  # run with a compressed downlink, caught at once
        assert failed[0].detail.startswith("topk downlink, round 1: "), failed[0].line()


def test_a_plugin_ignoring_the_configured_downlink_fails(tmp_path: Path) -> None:
    """A method that sends its model dense its own way, never through `broadcast`, while it
    admits any downlink: a grid's top-k downlink would label its results and change nothing
    (the silent ignore validation now refuses for the built-ins that declare it)."""
    sent = 'down, bd = broadcast(env, s.x, s.down, rng("downlink"))'
    dense = "down, bd = s.down._replace(x_hat=s.x), 32 * env.d"
    text = BASE.replace(sent, dense).replace("{body}", "x = s.x + msg.value.mean(0)")
    path = tmp_path / "broken_ignores_down.py"
    path.write_text(text.replace("{name}", "broken_ignores_down").replace("{extra}", ""))
    plugin = plugins.load(str(path))
    try:
        results = conformance.check("broken_ignores_down", full=False)
    finally:
        plugins._forget(plugin)
    failed = [r for r in results if not r.ok]
    assert [r.name for r in failed] == ["downlink bits counted"], [r.line() for r in results]
    assert "topk downlink was admitted but nothing went through it" in failed[0].detail
    # declared, the same method passes: validation refuses the compressed downlink instead
    declared = text.replace("{extra}", ', extra={"downlink": "exact"}')
    path.write_text(declared.replace("{name}", "broken_ignores_down"))
    plugin = plugins.load(str(path))
    try:
        results = conformance.check("broken_ignores_down", full=False)
    finally:
        plugins._forget(plugin)
    assert all(r.ok for r in results), [r.line() for r in results]


def _bits(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


@pytest.mark.parametrize(
    ("msgs", "logged", "short"),
    [
        ([_bits(100)], _bits(100, 100, 100), False),  # a broadcast to 3 receivers
        ([_bits(100)], _bits(100, 100, 99), True),  # one receiver short
        ([_bits(100)], _bits(300), False),  # one entry: one receiver
        ([_bits(100)], _bits(), True),  # a broadcast nobody is logged to have got
        ([_bits(0)], _bits(), False),  # nothing that costs bits
        ([], _bits(0, 0), False),  # nothing down (gossip)
        ([_bits(100), _bits(100)], _bits(100, 100), False),  # a size query and the message
        ([_bits(50, 70)], _bits(50, 70), False),  # a row per receiver (paths)
        ([_bits(50, 70)], _bits(50, 50), True),
        ([_bits(50, 70), _bits(10)], _bits(60, 70), True),  # rows and a broadcast to 2
        ([_bits(50, 70), _bits(10)], _bits(60, 80), False),
    ],
)
def test_downlink_relation(msgs: list[torch.Tensor], logged: torch.Tensor, short: bool) -> None:
    assert bool(conformance._downlink_short(msgs, logged)) == short

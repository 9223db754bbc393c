"""LoRA adapters on the transformer (`[task] lora_rank`): frozen base, only adapters trained
and communicated."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from conftest import make_env, run_rounds

from fedbench import grid, seeding
from fedbench.data import load_federated
from fedbench.models import build_model
from fedbench.models.transformer import LORA_TARGETS, LoRATransformer, Transformer
from fedbench.task import ClientData, Task

NET = {"layers": 2, "width": 16, "heads": 2, "context": 16}


def lm_task(seed: int = 0, **model: object) -> Task:
    spec = {"dataset": "grammar_text", "partition": "natural", "clients": 4}
    spec |= {"test_fraction": 0.1, "data_seed": 0, "context": 16, "chars": 20_000}
    fd = load_federated(spec, 0)
    data = ClientData.from_numpy(fd.x, fd.y, fd.counts, fd.x_test, fd.y_test, torch.device("cpu"))
    net = build_model("transformer", {**NET, **model}, fd.input_shape, fd.num_classes, seed=seed)
    return Task(net, data)


def x0(task: Task, seed: int = 0) -> torch.Tensor:
    return task.init_params(seeding.generator(seed, 0, seeding.INIT))


GRID = """
[experiment]
seeds = [0]
rounds = 5
[task]
dataset = "grammar_text"
model = "transformer"
clients = 4
context = 16
{extra}
[algorithm]
name = "diloco"
"""

# the job key of GRID (no lora field) computed at commit 3020979, before LoRA existed
KEY_BEFORE_LORA = "91c36c41849112fa"


def test_lora_rank_zero_keeps_job_keys_and_the_full_model(tmp_path: Path):
    keys = []
    for extra in ("", "lora_rank = 0", "lora_rank = 0\nlora_alpha = 1.0"):
        p = tmp_path / "g.toml"
        p.write_text(GRID.format(extra=extra))
        (job,) = grid.load(p).jobs
        keys.append(job.key)
    assert keys == [KEY_BEFORE_LORA] * 3
    p.write_text(GRID.format(extra="lora_rank = 2"))
    assert grid.load(p).jobs[0].key != KEY_BEFORE_LORA
    full, zero = lm_task(), lm_task(lora_rank=0)
    assert type(zero.model) is Transformer and zero.d == full.d
    assert torch.equal(x0(full), x0(zero))


def test_adapter_count_and_initial_model_equals_the_base():
    r, W, L = 3, NET["width"], NET["layers"]
    full, lora = lm_task(seed=7), lm_task(seed=7, lora_rank=r)
    model = lora.model
    assert isinstance(model, LoRATransformer)
    # per block: qkv r(W + 3W), proj r(W + W), fc r(W + 4W), out r(4W + W)
    assert lora.d == L * 16 * r * W
    w0 = x0(lora, seed=7)  # the adapters; the base comes from the same seed
    assert torch.equal(model.base, x0(full, seed=7))
    ad = model.spec.unflatten(w0)
    for name, v in ad.items():  # B = 0, A ~ U(±1/√in), not all zero
        if name.endswith("lora_B"):
            assert torch.equal(v, torch.zeros_like(v))
        else:
            assert v.abs().max() <= 1 / math.sqrt(v.shape[1]) and v.abs().sum() > 0
    x = full.data.x_test[:5].unsqueeze(0)
    assert torch.equal(model.logits(w0.unsqueeze(0), x), full.model.logits(model.base[None], x))
    assert lora.evaluate(w0) == full.evaluate(model.base)


def test_adapter_gradient_is_the_chain_rule_of_the_full_gradient():
    """∂/∂A = s·Bᵀ G_W and ∂/∂B = s·G_W Aᵀ, with G_W the full model's gradient at W₀ + s·BA."""
    r, alpha = 2, 4.0
    lora = lm_task(lora_rank=r, lora_alpha=alpha)
    model = lora.model
    assert isinstance(model, LoRATransformer)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(2, lora.d, generator=gen) * 0.1  # two clients, B ≠ 0
    ids = torch.tensor([0, 2])
    idx = lora.batch_indices(ids, 1, 4, gen)[:, 0]
    _, g = lora.loss_grad(w, ids, idx)
    merged = model.merged(w)
    wf = torch.stack(
        [model.full.spec.flatten({k: v[i] for k, v in merged.items()}) for i in (0, 1)]
    )
    full = Task(model.full, lora.data)
    _, gf = full.loss_grad(wf, ids, idx)
    s = alpha / r
    ga, gw, ad = model.spec.unflatten(g), model.full.spec.unflatten(gf), model.spec.unflatten(w)
    for t in LORA_TARGETS:
        pre = f"blocks.1.{t}."
        GW = gw[pre + "weight"]  # [2, out, in]
        want_a = s * ad[pre + "lora_B"].transpose(1, 2) @ GW
        want_b = s * GW @ ad[pre + "lora_A"].transpose(1, 2)
        torch.testing.assert_close(ga[pre + "lora_A"], want_a, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ga[pre + "lora_B"], want_b, rtol=1e-4, atol=1e-6)


DILOCO = {"lr": 0.03, "local_steps": 5, "warmup_steps": 0, "outer_lr": 0.7}


def test_only_adapters_change_bits_count_adapters_and_loss_decreases():
    r = 2
    lora = lm_task(lora_rank=r, lora_alpha=4.0)
    model = lora.model
    assert isinstance(model, LoRATransformer)
    env = make_env(lora, batch_size=8)
    state, logs, alg = run_rounds("diloco", DILOCO, env, 6)
    w = alg.params(state)
    assert all(torch.equal(lg.bits_up, torch.full((4,), 32 * lora.d)) for lg in logs)
    assert all(torch.equal(lg.bits_down, torch.full((4,), 32 * lora.d)) for lg in logs)
    merged = {k: v[0] for k, v in model.merged(w.unsqueeze(0)).items()}
    base = model.full.spec.unflatten(model.base)
    for name, v in merged.items():
        adapted = name.rsplit(".", 1)[0].split(".", 2)[-1] in LORA_TARGETS and "weight" in name
        if not adapted:  # the frozen base: bit for bit
            assert torch.equal(v, base[name]), name
        else:  # W − W₀ = s·BA has rank ≤ r and is not zero any more
            diff = v - base[name]
            assert 0 < int(torch.linalg.matrix_rank(diff)) <= r
    start = lora.evaluate(x0(lora))["test_loss"]
    assert lora.evaluate(w)["test_loss"] < start - 0.05  # 3.41 -> 3.35 (seed 0)


def test_topk_sparsifies_the_adapter_update_and_counts_only_adapters():
    lora = lm_task(lora_rank=2)
    env = make_env(lora, up="topk", up_params={"ratio": 0.1}, batch_size=8)
    _, logs, _ = run_rounds("fedavg", {"lr": 0.5, "local_steps": 2}, env, 2)
    k = round(0.1 * lora.d)
    want = 32 * k + min(k * math.ceil(math.log2(lora.d)), lora.d)
    assert all(torch.equal(lg.bits_up, torch.full((4,), want)) for lg in logs)


def test_lora_norms_trains_layernorms_from_the_base_values():
    r, W, L = 2, NET["width"], NET["layers"]
    strict, lora = lm_task(lora_rank=r), lm_task(lora_rank=r, lora_norms=True)
    model = lora.model
    assert isinstance(model, LoRATransformer)
    assert lora.d == strict.d + (2 * L + 1) * 2 * W  # ln1, ln2 per block and ln_f: scale + shift
    w0 = x0(lora)
    assert lora.evaluate(w0) == strict.evaluate(x0(strict))  # still the base model at start
    env = make_env(lora, batch_size=8)
    state, _, alg = run_rounds("diloco", DILOCO, env, 2)
    ad = model.spec.unflatten(alg.params(state))
    assert not torch.equal(ad["ln_f.weight"], torch.ones(W))
    bounds = model.block_slices()  # each block's adapters and norms, contiguous
    assert [b.stop - b.start for b in bounds] == [16 * r * W + 4 * W] * L

"""A small decoder-only character/byte language model: `transformer`.

GPT-2-style blocks (Radford et al., "Language Models are Unsupervised Multitask Learners",
2019) at toy scale, as the DiLoCo family's small-scale proxy (ALGORITHMS.md §D3):

    h_0 = E[x] + P[:T]                                   token + learned positional embedding
    h_l = h_l' + MLP(LN(h_l')),  h_l' = h_{l-1} + Attn(LN(h_{l-1}))      pre-LayerNorm blocks
    z   = LN(h_L) E^T  (tied = true)   or   LN(h_L) U^T  (tied = false, own output matrix U)

Attention is causal multi-head (`heads` heads of width `width / heads`), the MLP is
`width -> 4 width -> width` with GELU. No dropout, no BatchNorm (LayerNorm is per token, so it
is safe under vmap). Initialisation follows GPT-2: N(0, 0.02) weights, residual output
projections N(0, 0.02 / sqrt(2 layers)), zero biases, unit LayerNorm scales.

Inputs are token ids `x [B, T]` (stored as float32 by `ClientData`, exact below 2^24, cast to
int64 at the embedding); labels are the next tokens `y [B, T]`. The vocabulary is the dataset's
`num_classes`. `context` is a parameter of both the LM datasets and this model; the `[task]`
section is one flat namespace, so one `context = ...` sets both, and the model refuses a
dataset whose sequences are longer than its positional table.

Per-sequence loss is the mean token cross-entropy, accuracy the share of next tokens predicted
exactly; the task then logs perplexity = exp(test_loss) (mean per-token NLL over equal-length
sequences, so exp of it is the usual token-level perplexity).

Vectorisation over clients: the forward is written once for a leading client axis (`[m, ...]`
weights, batched matmuls); `loss_grad` takes the cohort's gradient by one reverse pass of
Σ_i loss_i (client i's loss depends only on row i of `w`), which was faster than
`vmap(grad(...))` here (see the report in tests/test_lm.py). The `nn.Module` template calls the
same forward with m = 1, so the generic torch.func path of `Model` still works and is what the
tests compare against.

`Transformer.block_slices()` gives the `[start, end)` range of every block inside the flat
vector (fragments for Streaming DiLoCo); blocks are contiguous and in order.

LoRA (`lora_rank = r > 0`): "LoRA: Low-Rank Adaptation of Large Language Models", Hu, Shen,
Wallis, Allen-Zhu, Li, Wang, Wang, Chen, ICLR 2022, arXiv 2106.09685. Every linear weight of
every block (attention qkv and output projection, MLP fc and out) becomes
W = W₀ + (α/r)·B A with A [r, in], B [out, r]; W₀ and every other parameter (embeddings,
positions, LayerNorms, biases) is a frozen base. The task's flat vector x ∈ R^d is then the
adapters alone (d = Σ r·(in + out)), so every algorithm trains and communicates only them.
`lora_norms = true` also trains the LayerNorm scales and shifts (2W per norm): a random base
with frozen tied embeddings and frozen norms cannot scale its logits, so strict LoRA on a
random base plateaus near ln V on the toy task.
Initialisation as the official loralib (`Linear.reset_parameters`): A ~ kaiming_uniform(a=√5)
= U(±1/√in), B = 0, so the initial model is the base model; scaling α/r (loralib's default
α = 1). The base is the GPT-2 initialisation drawn from the job's seed (the generator the
full model's x0 is drawn from), so a LoRA run starts from the same network as a full-model run
with the same seed; server and clients both know it (nothing sent). Deviation: the paper adapts
a pretrained model (and, for GPT-2, only W_q and W_v); there is no pretrained model here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedbench import seeding
from fedbench.models.base import MODELS, REG_PARAMS, Model, ParamSpec
from fedbench.params import Component, Param

CONTEXT = Param(
    64, "tokens per training sequence (shared with the LM datasets)", "int", low=2, high=4096
)


def _linear(h: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """`h [m, ..., in]` times `w [m, out, in]`^T plus `b [m, out]` -> `[m, ..., out]`."""
    m, lead = h.shape[0], h.shape[1:-1]
    flat = h.reshape(m, -1, h.shape[-1])  # [m, R, in]
    out = (
        torch.bmm(flat, w.transpose(1, 2))
        if b is None
        else torch.baddbmm(b.unsqueeze(1), flat, w.transpose(1, 2))
    )
    return out.view(m, *lead, w.shape[1])


def _layer_norm(h: Tensor, g: Tensor, b: Tensor) -> Tensor:
    """Per-token LayerNorm with per-client scale/shift `g, b [m, W]`; `h [m, B, T, W]`."""
    h = F.layer_norm(h, h.shape[-1:])
    return h * g[:, None, None] + b[:, None, None]


def _attention(h: Tensor, p: dict[str, Tensor], pre: str, heads: int) -> Tensor:
    """Causal multi-head self-attention; `h [m, B, T, W]` -> `[m, B, T, W]`."""
    m, B, T, W = h.shape
    qkv = _linear(h, p[pre + "qkv.weight"], p[pre + "qkv.bias"])  # [m, B, T, 3W]
    qkv = qkv.view(m * B, T, 3, heads, W // heads).permute(2, 0, 3, 1, 4)  # [3, mB, H, T, Dh]
    a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)  # [mB, H, T, Dh]
    a = a.transpose(1, 2).reshape(m, B, T, W)
    return _linear(a, p[pre + "proj.weight"], p[pre + "proj.bias"])


def forward(p: dict[str, Tensor], x: Tensor, layers: int, heads: int, tied: bool) -> Tensor:
    """Logits `[m, B, T, V]` of token ids `x [m, B, T]` under per-client weights `p[name]
    [m, *shape]` (the views `ParamSpec.unflatten` gives)."""
    t = x.long()
    T = t.shape[-1]
    emb = p["tok.weight"]  # [m, V, W]
    m, V, W = emb.shape
    rows = t.reshape(m, -1) + (torch.arange(m, device=t.device) * V).unsqueeze(1)  # [m, B*T]
    h = emb.reshape(m * V, W)[rows].view(*t.shape, W) + p["pos"][:, None, :T]  # [m, B, T, W]
    for i in range(layers):
        pre = f"blocks.{i}."
        a = _layer_norm(h, p[pre + "ln1.weight"], p[pre + "ln1.bias"])
        h = h + _attention(a, p, pre + "attn.", heads)
        a = _layer_norm(h, p[pre + "ln2.weight"], p[pre + "ln2.bias"])
        a = F.gelu(_linear(a, p[pre + "fc.weight"], p[pre + "fc.bias"]))  # [m, B, T, 4W]
        h = h + _linear(a, p[pre + "out.weight"], p[pre + "out.bias"])
    h = _layer_norm(h, p["ln_f.weight"], p["ln_f.bias"])
    return _linear(h, emb if tied else p["head.weight"], None)  # [m, B, T, V]


def _attr(module: nn.Module, dotted: str) -> Tensor:
    """`module.a.b.c` for `"a.b.c"` (parameters as `functional_call` swapped them in)."""
    out: Any = module
    for part in dotted.split("."):
        out = getattr(out, part)
    assert isinstance(out, Tensor)
    return out


class _Block(nn.Module):
    """Parameter holder of one block (the forward is the functional `forward` above)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(width, 3 * width)
        self.attn.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)


class _Net(nn.Module):
    """Template module: holds the parameter shapes, runs `forward` for one client (m = 1)."""

    def __init__(
        self, vocab: int, context: int, layers: int, width: int, heads: int, tied: bool
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(context, width))
        self.blocks = nn.ModuleList([_Block(width) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width)
        if not tied:
            self.head = nn.Linear(width, vocab, bias=False)
        self.cfg = (layers, heads, tied)
        self.names = [n for n, _ in self.named_parameters()]

    def forward(self, x: Tensor) -> Tensor:  # x [B, T] -> [B, T, V]
        p = {n: _attr(self, n).unsqueeze(0) for n in self.names}  # the (swapped-in) params
        return forward(p, x.unsqueeze(0), *self.cfg)[0]


class Transformer(Model):
    """Decoder-only LM over a flat parameter vector, batched over clients."""

    reports_perplexity = True
    thread_safe = True  # `forward` is a function of the per-client weights, no module swap

    def __init__(
        self, vocab: int, context: int, layers: int, width: int, heads: int, tied: bool
    ) -> None:
        if width % heads:
            raise ValueError(f"transformer: width {width} is not a multiple of heads {heads}")
        super().__init__(_Net(vocab, context, layers, width, heads, tied), vocab)
        self.context, self.layers, self.heads, self.tied = context, layers, heads, tied

    def init(self, gen: torch.Generator) -> Tensor:
        """GPT-2 initialisation (module docstring), drawn from `gen`. [d]"""
        out = torch.zeros(self.spec.d)
        for name, v in self.spec.unflatten(out).items():
            if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "ln_f.weight":
                v.fill_(1.0)
            elif v.dim() >= 2:
                resid = name.endswith("proj.weight") or name.endswith("out.weight")
                std = 0.02 / math.sqrt(2 * self.layers) if resid else 0.02
                v.normal_(0.0, std, generator=gen)
        return out

    def activation_floats(self, input_shape: tuple[int, ...]) -> int:
        """Floats kept for the backward pass per sequence (Task's memory budget): per block
        ~18 T·W (norms, qkv, attention, MLP at 4W, residuals) + H·T² (attention weights, an
        upper bound), plus embeddings, final norm and logits/log-softmax."""
        T, W, V = input_shape[0], self.spec.shapes[0][1], self.num_classes
        return T * (self.layers * (18 * W + self.heads * T) + 2 * W + 2 * V)

    def block_slices(self) -> list[slice]:
        """Flat range of each transformer block, in order."""
        out = []
        for i in range(self.layers):
            pre = f"blocks.{i}."
            idx = [k for k, n in enumerate(self.spec.names) if n.startswith(pre)]
            last = idx[-1]
            start = self.spec.offsets[idx[0]]
            out.append(slice(start, self.spec.offsets[last] + self.spec.shapes[last].numel()))
        return out

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        """`w [m, d]`, `x [m, B, T]` -> `[m, B, T, V]`."""
        return forward(self.spec.unflatten(w), x, self.layers, self.heads, self.tied)

    def sample_loss(self, z: Tensor, y: Tensor) -> Tensor:
        """Mean token cross-entropy per sequence: `z [B, T, V]`, `y [B, T]` -> `[B]`."""
        return F.cross_entropy(z.transpose(1, -1), y, reduction="none").mean(-1)

    def correct(self, z: Tensor, y: Tensor) -> Tensor:
        """Share of next tokens predicted exactly (argmax) per sequence. [B]"""
        return (z.argmax(-1) == y).float().mean(-1)

    def loss_grad(
        self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor, out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-client loss Σ_b wt_b · loss_b `[m]` and gradient `[m, d]` in one reverse pass."""
        with torch.enable_grad():
            wg = w.detach().requires_grad_()
            z = self.logits(wg, x)  # [m, B, T, V]
            m, B, T, V = z.shape
            per = (
                F.cross_entropy(
                    z.reshape(m * B, T, V).transpose(1, 2), y.reshape(m * B, T), reduction="none"
                )
                .mean(-1)
                .view(m, B)
            )
            loss = (per * wt).sum(1)  # [m]
            (g,) = torch.autograd.grad(loss.sum(), wg)
        if out is not None:
            out.copy_(g)
            g = out
        return loss.detach(), g


LORA_TARGETS = ("attn.qkv", "attn.proj", "fc", "out")  # the adapted linear layers of a block


def _param_tree(shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """A module holding a parameter of each shape at its dotted name (a template for
    `ParamSpec.from_module`)."""
    root = nn.Module()
    for name, shape in shapes.items():
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))
    return root


class LoRATransformer(Model):
    """The transformer with a frozen base W₀ and trainable adapters x = (A, B) of every block's
    linear layers: the flat vector `[d]` holds only the adapters (module docstring)."""

    reports_perplexity = True
    thread_safe = True  # as Transformer; the per-device copy of W₀ is the same from any thread

    def __init__(
        self, full: Transformer, rank: int, alpha: float, seed: int, norms: bool = False
    ) -> None:
        shape = dict(zip(full.spec.names, full.spec.shapes, strict=True))
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(full.layers):
            for t in LORA_TARGETS:
                out_f, in_f = shape[f"blocks.{i}.{t}.weight"]
                shapes[f"blocks.{i}.{t}.lora_A"] = (rank, in_f)  # A [r, in]
                shapes[f"blocks.{i}.{t}.lora_B"] = (out_f, rank)  # B [out, r]
            if norms:
                for ln in ("ln1", "ln2"):
                    for k in ("weight", "bias"):
                        shapes[f"blocks.{i}.{ln}.{k}"] = tuple(shape[f"blocks.{i}.{ln}.{k}"])
        if norms:
            shapes |= {f"ln_f.{k}": tuple(shape[f"ln_f.{k}"]) for k in ("weight", "bias")}
        super().__init__(_param_tree(shapes), full.num_classes)
        self.full, self.rank, self.scale = full, rank, alpha / rank
        self.base = full.init(seeding.generator(seed, 0, seeding.INIT))  # W₀ [d_full], frozen
        self.norms = [n for n in self.spec.names if not n.endswith(("lora_A", "lora_B"))]
        self._base_on: dict[torch.device, dict[str, Tensor]] = {}

    def init(self, gen: torch.Generator) -> Tensor:
        """Adapters `[d]`: the base is drawn from `gen` first (the full model's draw, discarded
        here: it is `self.base` when `gen` is the job's init generator), then A ~ U(±1/√in),
        B = 0 (loralib)."""
        base = self.full.spec.unflatten(self.full.init(gen))
        out = torch.zeros(self.spec.d)
        for name, v in self.spec.unflatten(out).items():
            if name.endswith("lora_A"):
                bound = 1.0 / math.sqrt(v.shape[1])
                v.uniform_(-bound, bound, generator=gen)
            elif name in self.norms:  # trained LayerNorms start at the base's values
                v.copy_(base[name])
        return out

    def base_params(self, device: torch.device) -> dict[str, Tensor]:
        """W₀ as `{name: [*shape]}` on `device` (copied there once)."""
        if device not in self._base_on:
            self._base_on[device] = self.full.spec.unflatten(self.base.to(device))
        return self._base_on[device]

    def merged(self, w: Tensor) -> dict[str, Tensor]:
        """Per-client full parameters `{name: [m, *shape]}` for adapters `w [m, d]`:
        W = W₀ + (α/r)·B A on adapted weights, W₀ broadcast elsewhere."""
        m = w.shape[0]
        ad = self.spec.unflatten(w)
        p = {k: v.expand(m, *v.shape) for k, v in self.base_params(w.device).items()}
        for i in range(self.full.layers):
            for t in LORA_TARGETS:
                pre = f"blocks.{i}.{t}."
                ba = torch.bmm(ad[pre + "lora_B"], ad[pre + "lora_A"])  # [m, out, in]
                p[pre + "weight"] = p[pre + "weight"] + self.scale * ba
        for name in self.norms:  # LayerNorms trained with the adapters (lora_norms = true)
            p[name] = ad[name]
        return p

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        """`w [m, d]` adapters, `x [m, B, T]` -> `[m, B, T, V]`."""
        f = self.full
        return forward(self.merged(w), x, f.layers, f.heads, f.tied)

    sample_loss = Transformer.sample_loss
    correct = Transformer.correct
    loss_grad = Transformer.loss_grad

    def activation_floats(self, input_shape: tuple[int, ...]) -> int:
        """The full model's activations per sequence (Task's memory budget); the merged
        weights `[m, d_full]` are not counted."""
        return self.full.activation_floats(input_shape)

    def block_slices(self) -> list[slice]:
        """Flat range of each block's adapters, in order."""
        return _block_slices(self.spec, self.full.layers)


def _block_slices(spec: ParamSpec, layers: int) -> list[slice]:
    out = []
    for i in range(layers):
        idx = [k for k, n in enumerate(spec.names) if n.startswith(f"blocks.{i}.")]
        out.append(
            slice(spec.offsets[idx[0]], spec.offsets[idx[-1]] + spec.shapes[idx[-1]].numel())
        )
    return out


def _build(
    input_shape: tuple[int, ...],
    num_classes: int,
    layers: int,
    width: int,
    heads: int,
    context: int,
    tied: bool,
    lora_rank: int = 0,
    lora_alpha: float = 1.0,
    lora_norms: bool = False,
    seed: int = 0,
    **_: Any,
) -> Model:
    if len(input_shape) != 1 or input_shape[0] > context:
        raise ValueError(
            f"model 'transformer' needs token sequences [T] with T <= context = {context}; "
            f"this dataset has samples of shape {list(input_shape)}"
        )
    full = Transformer(num_classes, context, layers, width, heads, tied)
    return (
        full if lora_rank == 0 else LoRATransformer(full, lora_rank, lora_alpha, seed, lora_norms)
    )


MODELS.add(
    Component(
        "transformer",
        _build,
        {
            "layers": Param(2, "transformer blocks", "int", low=1),
            "width": Param(64, "model width (embedding size)", "int", low=1),
            "heads": Param(4, "attention heads (must divide width)", "int", low=1),
            "context": CONTEXT,
            "tied": Param(True, "output layer shares the token embedding matrix", "bool"),
            "lora_rank": Param(
                0,
                "LoRA rank r: train and send only rank-r adapters of every block's linear "
                "layers over a frozen base drawn from the seed (0 = the full model)",
                "int",
                low=0,
                since="0.2",
            ),
            "lora_alpha": Param(
                1.0,
                "LoRA α: the adapter update BA is scaled by α/r",
                low=0.0,
                low_open=True,
                since="0.2",
            ),
            "lora_norms": Param(
                False,
                "with lora_rank > 0: also train (and send) the LayerNorm scales and shifts",
                "bool",
                since="0.2",
            ),
            **REG_PARAMS,
        },
        "decoder-only pre-LayerNorm transformer LM (tokens in, next-token logits out)",
        paper="Radford et al., Language Models are Unsupervised Multitask Learners, 2019 "
        "(GPT-2 block and init), at toy scale",
        # a language model: token sequences in (grid check); seeded: build_model passes the
        # job's seed (the LoRA base is drawn from it)
        extra={"sequences": True, "seeded": True},
    )
)

"""Compressors: one file each, registered here with their grid parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedbench.compressors.base import Compressed, Compressor
from fedbench.compressors.error_feedback import error_feedback
from fedbench.compressors.identity import identity
from fedbench.compressors.natural import natural
from fedbench.compressors.qsgd import qsgd
from fedbench.compressors.randk import randk
from fedbench.compressors.sign import sign
from fedbench.compressors.topk import topk
from fedbench.params import Component, Param, Registry

COMPRESSORS = Registry("compressor")

_SPARSITY = {
    "ratio": Param(
        0.01, "fraction of coordinates kept (used when k = 0)", low=0.0, high=1.0, low_open=True
    ),
    "k": Param(0, "number of coordinates kept; 0 means use ratio", "int", low=0),
}

COMPRESSORS.add(Component("identity", identity, {}, "no compression: 32·d bits", kind="exact"))
COMPRESSORS.add(
    Component(
        "topk",
        topk,
        dict(_SPARSITY),
        "k largest-magnitude coordinates: 32k + index bits",
        paper="Stich, Cordonnier, Jaggi, NeurIPS 2018 (arXiv 1809.07599)",
        kind="contractive",
    )
)
COMPRESSORS.add(
    Component(
        "randk",
        randk,
        {
            **_SPARSITY,
            "unbiased": Param(
                True, "scale kept values by d/k (unbiased) instead of contractive", "bool"
            ),
            "shared_seed": Param(
                True, "positions regenerated from a shared seed (no index bits)", "bool"
            ),
        },
        "k uniformly random coordinates: 32k bits with shared randomness",
        paper="Stich, Cordonnier, Jaggi, NeurIPS 2018 (arXiv 1809.07599)",
        kind="unbiased",
    )
)
COMPRESSORS.add(
    Component(
        "qsgd",
        qsgd,
        {
            "levels": Param(16, "quantisation levels s", "int", low=1),
            "bucket": Param(0, "bucket length with its own norm; 0 = whole vector", "int", low=0),
        },
        "stochastic quantisation to s levels: 32 per norm + (1 + ⌈log2(s+1)⌉)·d",
        paper="Alistarh et al., NeurIPS 2017 (arXiv 1610.02132)",
        kind="unbiased",
    )
)
COMPRESSORS.add(
    Component(
        "sign",
        sign,
        {},
        "scaled sign (‖x‖₁/d)·sign(x): d + 32 bits",
        paper="Karimireddy et al., ICML 2019 (arXiv 1901.09847)",
        kind="contractive",
    )
)
COMPRESSORS.add(
    Component(
        "natural",
        natural,
        {},
        "stochastic rounding to powers of two: 9·d bits",
        paper="Horváth et al., MSML 2022 (arXiv 1905.10988)",
        kind="unbiased",
    )
)


def compressor_kind(name: str, params: Mapping[str, Any]) -> str:
    """The kind of a configured compressor ("exact" | "unbiased" | "contractive")."""
    if name == "randk" and not params.get("unbiased", True):
        return "contractive"
    return COMPRESSORS[name].kind


def build_compressor(name: str, params: Mapping[str, Any], d: int) -> Compressor:
    comp = COMPRESSORS[name]
    c: Compressor = comp.build(d, **comp.resolve(params))
    return c


__all__ = [
    "COMPRESSORS",
    "Compressed",
    "Compressor",
    "build_compressor",
    "compressor_kind",
    "error_feedback",
]

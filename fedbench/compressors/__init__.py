"""Compressors: one file each; each file registers itself in `COMPRESSORS` with its grid
parameters (every module of this package is imported here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedbench.compressors.base import COMPRESSORS, Compressed, Compressor, check_shapes
from fedbench.compressors.error_feedback import error_feedback
from fedbench.params import import_submodules

import_submodules(__name__, __path__)

BITS_CONVENTIONS = ("full", "values")


def compressor_kind(name: str, params: Mapping[str, Any]) -> str:
    """The kind of a configured compressor ("exact" | "unbiased" | "contractive" | "biased");
    a component whose kind depends on its parameters says so with `extra["kind_of"]`."""
    comp = COMPRESSORS[name]
    kind_of = comp.extra.get("kind_of")
    return str(kind_of(comp.resolve(params))) if kind_of is not None else comp.kind


def build_compressor(
    name: str,
    params: Mapping[str, Any],
    d: int,
    shapes: Sequence[Sequence[int]] | None = None,
    clients: int | None = None,
) -> Compressor:
    """The configured compressor for messages of length d.

    `params` is the resolved grid section: the component's own fields plus `bits`, the bit
    convention ("full" | "values", ALGORITHMS §0.2). `shapes` are the model's parameter shapes
    (`task.model.spec.shapes`), needed by layer-wise compressors (`extra["shapes"]`); without
    them the whole vector is one layer. `clients` is the job's number of clients n, passed to
    compressors whose declared constant depends on it (`extra["clients"]`: PermK's ω).
    """
    comp = COMPRESSORS[name]
    convention = params.get("bits", "full")
    if convention not in BITS_CONVENTIONS:
        raise ValueError(f"bits = {convention!r}; allowed: {', '.join(BITS_CONVENTIONS)}")
    kw = comp.resolve(params)
    if comp.extra.get("shapes", False):
        kw["shapes"] = check_shapes(shapes, d)
    if comp.extra.get("clients", False) and clients is not None:
        kw["clients"] = clients
    c: Compressor = comp.build(d, values_only=convention == "values", **kw)
    return c


__all__ = [
    "BITS_CONVENTIONS",
    "COMPRESSORS",
    "Compressed",
    "Compressor",
    "build_compressor",
    "compressor_kind",
    "error_feedback",
]

"""The engine's data types: channel ids (``UnionFind``, ``Chan``), layer kinds and what the graph records.

``LayerKind`` names the kinds of channel-indexed state a ``Record`` can hold; ``lcp.engine.layers`` holds one
handler per kind that owns its cost and its surgery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class LayerKind(str, Enum):
    """What a ``Record`` is; a str Enum, so ``rec.kind == "conv"`` and JSON keep working."""

    CONV = "conv"  # a conv: output positions are filters, input positions are weight slices
    CONV_TRANSPOSE = "conv_transpose"  # a transposed conv: weight (in, out / groups, *kernel)
    COND_CONV = "cond_conv"  # timm's CondConv2d: per-sample mixture of expert convs, weight (experts, out * ...)
    LINEAR = "linear"  # a linear layer (features on the last dim)
    NORM = "norm"  # per-channel parameters and buffers (BatchNorm, GroupNorm, affine InstanceNorm...)
    PAD = "pad"  # a module that zero-pads channels (``pad_left`` / ``pad_right``), e.g. option-A shortcuts
    SPLIT = "split"  # one piece of a split with constant sizes (rewritten in the pruned graph)
    SLICE = "slice"  # a constant slice of channels ``x[:, a:b]`` (bounds rewritten in the pruned graph)

    def __str__(self) -> str:
        return self.value

    @property
    def has_filters(self) -> bool:
        """Whether its output positions are filters: the producers of a channel unit (conv, linear)."""
        return self in (LayerKind.CONV, LayerKind.CONV_TRANSPOSE, LayerKind.COND_CONV, LayerKind.LINEAR)


# --------------------------------------------------------------------------------------------------------------
# Ids, union-find and channel-carrying values


class UnionFind:
    """Union-find over dense integer ids, with a frozen flag and reason per root."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.frozen: dict[int, str] = {}  # id -> reason (reasons are merged on union)

    def new(self, n: int, frozen: str | None = None) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        ids = np.arange(start, start + n, dtype=np.int64)
        if frozen:
            for i in range(start, start + n):
                self.frozen[i] = frozen
        return ids

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self.parent[rb] = ra
        reason = self.frozen.pop(rb, None)
        if reason is not None and ra not in self.frozen:
            self.frozen[ra] = reason

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        for i in ids.tolist():
            r = self.find(i)
            self.frozen.setdefault(r, reason)

    def is_frozen(self, i: int) -> str | None:
        return self.frozen.get(self.find(i))


@dataclass
class Chan:
    """A tensor value whose dimension ``dim`` carries channel ids ``ids`` (one per position)."""

    dim: int
    ids: np.ndarray


# --------------------------------------------------------------------------------------------------------------
# What the graph records about each module (or graph node) that holds channel-indexed state


@dataclass
class Record:
    """Channel-indexed state of one module: its output/input ids and what its cost depends on.

    kind: a ``LayerKind`` (a plain string such as ``"conv"`` is converted).
    """

    name: str
    kind: LayerKind
    out_ids: np.ndarray | None = None
    in_ids: np.ndarray | None = None
    mode: str = "dense"  # conv: dense | depthwise | grouped
    groups: int = 1
    kernel: int = 1  # number of kernel elements (kh * kw)
    spatial: int = 0  # output positions per sample, summed over calls
    bias: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = LayerKind(self.kind)

    def axes(self) -> list[tuple[str, np.ndarray]]:
        return [(a, ids) for a, ids in (("out", self.out_ids), ("in", self.in_ids)) if ids is not None]


@dataclass
class Unit:
    """A set of channels that are removed together."""

    index: int
    root: int
    group: int = -1
    frozen: str | None = None
    producers: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (record index, out positions)
    members: list[tuple[int, str, int]] = field(default_factory=list)  # (record index, axis, count)
    key: str = ""  # stable name: "<module>:<axis>:<position>" of its first member

    @property
    def prunable(self) -> bool:
        return self.frozen is None and bool(self.producers)


@dataclass
class Group:
    """Units that share the same producer modules; they share one (alpha, kappa)."""

    index: int
    name: str
    producers: tuple[str, ...]
    units: list[int] = field(default_factory=list)


@dataclass
class Frozen:
    """One op that froze channels, and why."""

    where: str
    op: str
    reason: str


def floor_keep(n: int, min_ratio: float = 0.1, min_channels: int = 2) -> int:
    """Default per-group floor: keep at least max(ceil(min_ratio * n), min_channels) of n units (at most n)."""
    return min(n, max(math.ceil(min_ratio * n - 1e-9), min_channels))

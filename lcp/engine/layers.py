"""One handler per layer kind: what a record of that kind costs and how surgery shrinks it.

``LAYERS`` maps every ``LayerKind`` to its ``LayerHandler``; ``cost.py`` and ``surgery.py`` dispatch through it.
A handler's ``cost`` is exact (MACs per sample and parameters, the convention of ``cost.py``); its ``prune``
removes the positions not kept from the module (or records the forward-code constants to rewrite).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lcp.engine.rules import is_std_conv
from lcp.engine.types import LayerKind, Record

# ---------------------------------------------------------------------------------------------------------------
# Tensor and module helpers (shared with the connection surgery)


def select_positions(t: torch.Tensor, dim: int, keep: np.ndarray) -> torch.Tensor:
    """A detached copy of ``t`` with only positions ``keep`` along ``dim`` (``index_select`` always allocates)."""
    return t.detach().index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=t.device))


def set_param(m: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter or buffer ``name`` of ``m`` by ``value`` (a parameter stays a parameter)."""
    old = getattr(m, name)
    if isinstance(old, nn.Parameter):
        setattr(m, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(m, name, value)


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def delete_module(root: nn.Module, name: str) -> None:
    """Remove submodule ``name`` (dotted) from ``root``; nothing when it is already gone."""
    parent, _, child = name.rpartition(".")
    mod = root.get_submodule(parent) if parent else root
    if hasattr(mod, child):
        delattr(mod, child)


def prune_conv(m: nn.Conv2d, mode: str, keep_out: np.ndarray, keep_in: np.ndarray) -> None:
    """Keep filters ``keep_out`` and input channels ``keep_in`` of a dense, depthwise or grouped conv."""
    w = select_positions(m.weight, 0, keep_out)
    if mode == "dense":
        w = select_positions(w, 1, keep_in)
    elif mode == "grouped":
        in_pg = m.in_channels // m.groups
        w = select_positions(w, 1, keep_in[keep_in < in_pg])
    set_param(m, "weight", w)
    if m.bias is not None:
        set_param(m, "bias", select_positions(m.bias, 0, keep_out))
    if mode == "depthwise":
        m.groups = len(keep_in)
    m.in_channels, m.out_channels = len(keep_in), len(keep_out)


def prune_conv_transpose(m: nn.Module, mode: str, keep_out: np.ndarray, keep_in: np.ndarray) -> None:
    """Keep outputs ``keep_out`` and inputs ``keep_in`` of a transposed conv (weight ``(in, out / groups, *k)``)."""
    w = select_positions(m.weight, 0, keep_in)
    out_pg = m.out_channels // m.groups
    if mode == "dense":
        w = select_positions(w, 1, keep_out)
    elif mode == "grouped":  # the same positions go from every group
        w = select_positions(w, 1, keep_out[keep_out < out_pg])
    set_param(m, "weight", w)  # depthwise: one input per group, its out_pg outputs go with it
    if m.bias is not None:
        set_param(m, "bias", select_positions(m.bias, 0, keep_out))
    if mode == "depthwise":
        m.groups = len(keep_in)
    m.in_channels, m.out_channels = len(keep_in), len(keep_out)


def prune_linear(m: nn.Linear, keep_out: np.ndarray, keep_in: np.ndarray) -> None:
    set_param(m, "weight", select_positions(select_positions(m.weight, 0, keep_out), 1, keep_in))
    if m.bias is not None:
        set_param(m, "bias", select_positions(m.bias, 0, keep_out))
    m.in_features, m.out_features = len(keep_in), len(keep_out)


def prune_norm(m: nn.Module, n: int, keep: np.ndarray) -> None:
    """Keep channels ``keep`` of every parameter and buffer of ``m`` whose first dim is the channel count ``n``."""
    for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
        if t is not None and t.dim() >= 1 and t.shape[0] == n:
            set_param(m, name, select_positions(t, 0, keep))
    for attr in ("num_features", "num_channels", "num_parameters"):
        if hasattr(m, attr):
            setattr(m, attr, len(keep))
    if isinstance(m, nn.GroupNorm):  # whole groups are kept (rules.modules.group_norm_rule)
        m.num_groups = len(keep) // (n // m.num_groups)


def fold_weight_standardization(m: nn.Conv2d) -> nn.Conv2d:
    """A plain conv that computes what weight-standardized ``m`` (timm's StdConv2d, ScaledStdConv2d) computes.

    Such a conv normalizes every filter over its inputs, so removing an input channel would change every
    filter: the pruned network could not equal the masked original. With the standardized weight frozen into
    a plain conv, removing inputs is exact. Fine-tuning then trains plain weights (no re-standardization).
    """
    with torch.no_grad():
        gain = (m.gain * m.scale).reshape(-1) if isinstance(getattr(m, "gain", None), torch.Tensor) else None
        w = F.batch_norm(
            m.weight.reshape(1, m.out_channels, -1), None, None, weight=gain, training=True, momentum=0.0, eps=m.eps
        ).reshape_as(m.weight)
    cls: type[nn.Conv2d] = nn.Conv2d
    if getattr(m, "same_pad", False):  # dynamic TF "SAME" padding (its static padding is 0)
        from timm.layers import Conv2dSame  # optional dependency: only timm's convs get here

        cls = Conv2dSame
    new = cls(
        m.in_channels,
        m.out_channels,
        m.kernel_size,
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        groups=m.groups,
        bias=m.bias is not None,
        device=m.weight.device,
        dtype=m.weight.dtype,
    )
    new.weight = nn.Parameter(w.detach().clone(), requires_grad=m.weight.requires_grad)
    if m.bias is not None:
        new.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=m.bias.requires_grad)
    new.train(m.training)
    return new


# ---------------------------------------------------------------------------------------------------------------
# Handlers


@dataclass
class Rewrite:
    """What ``surgery.apply_plan`` builds: the pruned copy, its modules by name, and the constants of the
    forward code that change (split sizes per node and piece: (old, new); channel slices per node)."""

    model: nn.Module
    modules: dict[str, nn.Module]
    split_sizes: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    slices: dict[str, tuple[int, slice]] = field(default_factory=dict)

    def replace(self, name: str, new: nn.Module) -> None:
        self.modules[name] = new
        replace_module(self.model, name, new)


class LayerHandler:
    """Cost and surgery of one ``LayerKind``; the base handler costs nothing and changes nothing."""

    kind: LayerKind
    #: channel dim of its input that the masked original zeroes (consumers: conv 1, linear -1), or None
    input_dim: int | None = None

    def cost(self, rec: Record, n_out: int, n_in: int, n_norm_params: int) -> tuple[int, int]:
        """(MACs, params) with ``n_out`` output and ``n_in`` input positions kept (``n_norm_params``: per-channel
        parameter tensors of a norm)."""
        return 0, 0

    def norm_params(self, m: nn.Module | None, rec: Record) -> int:
        """Number of per-channel parameter tensors whose size follows the output width."""
        return 0

    def folded_params(self, m: nn.Module | None) -> int:
        """Parameters surgery removes whatever is kept (see ``fold_weight_standardization``)."""
        return 0

    def prune(self, job: Rewrite, rec: Record, keep_out: np.ndarray | None, keep_in: np.ndarray | None) -> None:
        """Shrink the module of ``rec`` in ``job`` to the kept positions."""

    def filters(self, m: nn.Module, w: torch.Tensor) -> torch.Tensor:
        """``w`` (the weight, or a tensor shaped like it) with one row per output position (importance)."""
        return w


class ConvHandler(LayerHandler):
    kind = LayerKind.CONV
    input_dim = 1

    def cost(self, rec: Record, n_out: int, n_in: int, n_norm_params: int) -> tuple[int, int]:
        in_pg = 1 if rec.mode == "depthwise" else (n_in // rec.groups if rec.mode == "grouped" else n_in)
        params = n_out * in_pg * rec.kernel + (n_out if rec.bias else 0)
        return rec.spatial * rec.kernel * in_pg * n_out, params

    def folded_params(self, m: nn.Module | None) -> int:
        if not is_std_conv(m):
            return 0
        return sum(p.numel() for n, p in m.named_parameters(recurse=False) if n not in ("weight", "bias"))

    def prune(self, job: Rewrite, rec: Record, keep_out: np.ndarray | None, keep_in: np.ndarray | None) -> None:
        m = job.modules[rec.name]
        if is_std_conv(m):  # always, so a pruned network's params do not depend on which inputs went
            m = fold_weight_standardization(m)
            job.replace(rec.name, m)
        prune_conv(m, rec.mode, keep_out, keep_in)


class ConvTransposeHandler(ConvHandler):
    """A transposed conv; its record's ``spatial`` counts input positions, so the conv cost formula holds."""

    kind = LayerKind.CONV_TRANSPOSE

    def folded_params(self, m: nn.Module | None) -> int:
        return 0

    def prune(self, job: Rewrite, rec: Record, keep_out: np.ndarray | None, keep_in: np.ndarray | None) -> None:
        prune_conv_transpose(job.modules[rec.name], rec.mode, keep_out, keep_in)

    def filters(self, m: nn.Module, w: torch.Tensor) -> torch.Tensor:
        g = m.groups
        grouped = w.reshape(g, w.shape[0] // g, w.shape[1], -1)  # (groups, in / groups, out / groups, k)
        return grouped.transpose(1, 2).reshape(g * w.shape[1], -1)


class CondConvHandler(ConvHandler):
    """timm's CondConv2d: every sample convolves with its own mixture ``routing @ weight`` of ``experts`` expert
    convs (weight ``(experts, out * in / groups * kh * kw)``); per sample it costs the conv plus the mixing
    matmuls, and surgery slices every expert alike."""

    kind = LayerKind.COND_CONV

    def cost(self, rec: Record, n_out: int, n_in: int, n_norm_params: int) -> tuple[int, int]:
        in_pg = 1 if rec.mode == "depthwise" else (n_in // rec.groups if rec.mode == "grouped" else n_in)
        experts = int(rec.extra["experts"])
        per_expert = n_out * in_pg * rec.kernel + (n_out if rec.bias else 0)
        return rec.spatial * rec.kernel * in_pg * n_out + experts * per_expert, experts * per_expert

    def folded_params(self, m: nn.Module | None) -> int:
        return 0

    def prune(self, job: Rewrite, rec: Record, keep_out: np.ndarray | None, keep_in: np.ndarray | None) -> None:
        m = job.modules[rec.name]
        experts = m.weight.shape[0]
        w = m.weight.reshape(experts, m.out_channels, m.in_channels // m.groups, *m.kernel_size)
        w = select_positions(w, 1, keep_out)
        if rec.mode == "dense":
            w = select_positions(w, 2, keep_in)
        elif rec.mode == "grouped":
            w = select_positions(w, 2, keep_in[keep_in < m.in_channels // m.groups])
        if rec.mode == "depthwise":
            m.groups = len(keep_in)
        m.in_channels, m.out_channels = len(keep_in), len(keep_out)
        m.weight_shape = tuple(w.shape[1:])
        set_param(m, "weight", w.reshape(experts, -1).contiguous())
        if m.bias is not None:
            set_param(m, "bias", select_positions(m.bias, 1, keep_out))
            m.bias_shape = (len(keep_out),)

    def filters(self, m: nn.Module, w: torch.Tensor) -> torch.Tensor:
        experts = w.shape[0]
        return w.reshape(experts, m.out_channels, -1).transpose(0, 1).reshape(m.out_channels, -1)


class LinearHandler(LayerHandler):
    kind = LayerKind.LINEAR
    input_dim = -1

    def cost(self, rec: Record, n_out: int, n_in: int, n_norm_params: int) -> tuple[int, int]:
        return rec.spatial * n_in * n_out, n_in * n_out + (n_out if rec.bias else 0)

    def prune(self, job: Rewrite, rec: Record, keep_out: np.ndarray | None, keep_in: np.ndarray | None) -> None:
        prune_linear(job.modules[rec.name], keep_out, keep_in)


class NormHandler(LayerHandler):
    kind = LayerKind.NORM

    def cost(self, rec: Record, n_out: int, n_in: int, n_norm_params: int) -> tuple[int, int]:
        return 0, n_norm_params * n_out

    def norm_params(self, m: nn.Module | None, rec: Record) -> int:
        if m is None:
            return 0
        return sum(1 for p in m.parameters(recurse=False) if p.numel() == len(rec.out_ids))

    def prune(self, job: Rewrite, rec: Record, keep_out: np.ndarray | None, keep_in: np.ndarray | None) -> None:
        prune_norm(job.modules[rec.name], len(rec.out_ids), keep_out)


class PadHandler(LayerHandler):
    """A module that zero-pads channels: its ``pad_left`` / ``pad_right`` shrink with the kept pad positions."""

    kind = LayerKind.PAD

    def prune(self, job: Rewrite, rec: Record, keep_out: np.ndarray | None, keep_in: np.ndarray | None) -> None:
        m = job.modules[rec.name]
        n_left = rec.extra["n_left"]
        m.pad_left = int((keep_out < n_left).sum())
        m.pad_right = int((keep_out >= n_left).sum())


class SplitHandler(LayerHandler):
    kind = LayerKind.SPLIT

    def prune(self, job: Rewrite, rec: Record, keep_out: np.ndarray | None, keep_in: np.ndarray | None) -> None:
        job.split_sizes.setdefault(rec.extra["node"], {})[rec.extra["piece"]] = (len(rec.out_ids), len(keep_out))


class SliceHandler(LayerHandler):
    kind = LayerKind.SLICE

    def prune(self, job: Rewrite, rec: Record, keep_out: np.ndarray | None, keep_in: np.ndarray | None) -> None:
        start = int((keep_in < rec.extra["start"]).sum())
        stop = int((keep_in < rec.extra["stop"]).sum())
        if (start, stop) != (rec.extra["start"], rec.extra["stop"]) or len(keep_in) != len(rec.in_ids):
            job.slices[rec.extra["node"]] = (rec.extra["pos"], slice(start, stop))


#: the handler of every layer kind
LAYERS: dict[LayerKind, LayerHandler] = {
    h.kind: h
    for h in (
        ConvHandler(),
        ConvTransposeHandler(),
        CondConvHandler(),
        LinearHandler(),
        NormHandler(),
        PadHandler(),
        SplitHandler(),
        SliceHandler(),
    )
}
assert set(LAYERS) == set(LayerKind), "every LayerKind needs a handler"

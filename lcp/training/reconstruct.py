"""Least-squares reconstruction of a pruned network's layers against the original's outputs.

After a cut, every dense convolution and linear layer of the pruned network is given the weights that best
reproduce the original layer's output on its kept channels from what reaches it in the pruned network (He et
al. 2017's channel-pruning reconstruction, ThiNet): the kept input channels take over what the removed ones
contributed. Layers are solved in execution order on one batch of training images, each from the inputs the
already reconstructed layers before it produce, so errors do not pile up with depth. Per layer:
``W = argmin |Y - X W^T|^2 + ridge * mean(diag(X^T X)) * |W|^2`` on sampled output positions, with a bias
column where the layer has a bias (BatchNorm recalibration, which follows, re-centres the others). A layer keeps
its cut weights when the solution does not fit the samples better. Depthwise and grouped convolutions keep their
cut weights (each output sees only its own inputs: nothing to take over), and so do subclasses of the two
(timm's padded or weight-standardised convolutions), whose forward is not the plain one the fit assumes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcp.engine.graph import ChannelGraph
from lcp.training.evaluate import device_of, inputs_and_labels, modes_kept

_CHUNK_ELEMENTS = 2**25  # unfolded input patches per chunk (128 MiB of float32)


def _affordable(model: nn.Module, one: Tensor, memory: int) -> int:
    """How many images fit through ``model`` at once when no activation may exceed ``memory`` bytes (the
    largest module output for one image ``one``, measured)."""
    largest = 0

    def hook(_m: nn.Module, _args: Any, out: Any) -> None:
        nonlocal largest
        if isinstance(out, Tensor):
            largest = max(largest, out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with modes_kept(model):
            model.eval()
            model(one)
    finally:
        for h in handles:
            h.remove()
    return max(1, memory // max(1, largest))


def _sample(mod: nn.Module, y: Tensor, positions: int, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """Rows of ``mod``'s output ``y`` to fit: a linear layer's tokens (all), or ``positions`` sampled output
    positions per image of a convolution; returns (rows x channels, the positions drawn or None)."""
    if isinstance(mod, nn.Linear):
        return y.reshape(-1, y.shape[-1]), None
    n, c = y.shape[:2]
    y = y.reshape(n, c, -1)
    idx = torch.randint(0, y.shape[2], (n, min(positions, y.shape[2])), generator=gen).to(y.device)
    return torch.gather(y, 2, idx[:, None].expand(n, c, idx.shape[1])).transpose(1, 2).reshape(-1, c), idx


def _inputs_at(mod: nn.Module, x: Tensor, idx: Tensor | None) -> Tensor:
    """The regression inputs that produce the rows ``_sample`` drew: a linear layer's tokens, or a
    convolution's input patches at the drawn output positions."""
    if idx is None:
        return x.reshape(-1, x.shape[-1])
    rows = []
    k = mod.kernel_size[0] * mod.kernel_size[1]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, x[:1].numel() * k))  # unfolded patches are k times the input
    for xc, ic in zip(x.split(chunk), idx.split(chunk)):
        cols = F.unfold(xc, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
        n, d, _ = cols.shape
        rows.append(torch.gather(cols, 2, ic[:, None].expand(n, d, ic.shape[1])).transpose(1, 2).reshape(-1, d))
    return torch.cat(rows)


def _solve(mod: nn.Module, x: Tensor, y: Tensor, ridge: float) -> bool:
    """Fit ``mod``'s weight (and bias) to the rows; True when it replaced the cut weights."""
    x, y = x.double(), y.double()
    if mod.bias is not None:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
    a = x.T @ x
    reg = ridge * float(a.diagonal().mean()) + 1e-12
    w = torch.linalg.solve(a + reg * torch.eye(len(a), dtype=a.dtype, device=a.device), x.T @ y).T
    old = mod.weight.detach().reshape(len(w), -1).double()
    if mod.bias is not None:
        old = torch.cat([old, mod.bias.detach().double()[:, None]], 1)
    if not bool(torch.isfinite(w).all()) or float(((x @ w.T - y) ** 2).mean()) >= float(((x @ old.T - y) ** 2).mean()):
        return False
    if mod.bias is not None:
        mod.bias.copy_(w[:, -1].to(mod.bias.dtype))
        w = w[:, :-1]
    mod.weight.copy_(w.reshape(mod.weight.shape).to(mod.weight.dtype))
    return True


def _layers(pruned: nn.Module, original: nn.Module, graph: ChannelGraph, removed: np.ndarray) -> dict[str, Tensor]:
    """Reconstructable layers of ``pruned`` by name -> the original's kept output positions: dense convolutions
    and linear layers present in both networks whose weights are the cut of the original's."""
    out: dict[str, Tensor] = {}
    for ri, rec in enumerate(graph.records):
        try:
            mod, orig = pruned.get_submodule(rec.name), original.get_submodule(rec.name)
        except AttributeError:  # removed with its branch (depth pruning)
            continue
        # exactly these classes: a subclass may pad, standardise or route its weights in its own forward
        dense = type(mod) is nn.Linear or (
            type(mod) is nn.Conv2d
            and mod.groups == 1
            and mod.padding_mode == "zeros"
            and isinstance(mod.padding, tuple)
        )
        if not dense or type(mod) is not type(orig):
            continue
        keep_out = graph.kept_positions(removed, ri, "out") if rec.out_ids is not None else None
        keep_in = graph.kept_positions(removed, ri, "in") if rec.in_ids is not None else None
        n_out = len(keep_out) if keep_out is not None else orig.weight.shape[0]
        n_in = len(keep_in) if keep_in is not None else orig.weight.shape[1]
        if tuple(mod.weight.shape[:2]) != (n_out, n_in):  # not a channel cut of this layer (connection pruning)
            continue
        out[rec.name] = torch.as_tensor(keep_out if keep_out is not None else np.arange(n_out))
    return out


@torch.no_grad()
def reconstruct(
    pruned: nn.Module,
    original: nn.Module,
    graph: ChannelGraph,
    removed: np.ndarray,
    batches: Iterable[Any],
    *,
    images: int = 1024,
    positions: int = 32,
    ridge: float = 1e-2,
    seed: int = 0,
    device: str | torch.device | None = None,
    memory: int = 2**30,
) -> dict[str, int]:
    """Refit ``pruned``'s dense layers (in place) to reproduce ``original``'s outputs on ``images`` images drawn
    from ``batches`` (labels unused); ``graph`` and ``removed`` are the cut's (``PruneResult.graph``,
    ``PruneResult.plan.removed``). ``pruned`` is the cut as made, with the original's BatchNorm statistics:
    recalibrate after the refit, not before (the refit reproduces the original's outputs under them).

    All images pass at once: fewer are used when one of the original's activations for them would exceed
    ``memory`` bytes, and fewer positions per image when the targets held for all layers would. Returns
    {"layers": layers refitted, "candidates": layers considered, "images": images used}."""
    dev = device_of(pruned, device)
    xs, n = [], 0
    for batch in batches:
        xs.append(inputs_and_labels(batch)[0])
        n += len(xs[-1])
        if n >= images:
            break
    if not xs or images < 1:
        return {"layers": 0, "candidates": 0, "images": 0}
    x = torch.cat(xs)[:images]
    x = x[: _affordable(original, x[:1].to(device_of(original, None)), memory)].to(dev)
    layers = _layers(pruned, original, graph, removed)
    # the sampled targets of every layer are held until the pruned pass reaches it: they too fit in ``memory``
    row_bytes = 4 * sum(len(k) for k in layers.values())
    positions = max(1, min(positions, memory // max(1, row_bytes * len(x))))
    gen = torch.Generator().manual_seed(seed)
    targets: dict[str, tuple[Tensor, Tensor | None]] = {}

    def record(name: str) -> Any:
        def hook(mod: nn.Module, _args: Any, out: Tensor) -> None:
            if name not in targets:  # a layer called twice is fitted on its first call
                dim = -1 if isinstance(mod, nn.Linear) else 1  # a linear layer's features are its last dimension
                targets[name] = _sample(mod, out.index_select(dim, layers[name].to(out.device)), positions, gen)

        return hook

    fitted = 0

    def fit(mod: nn.Module, args: tuple) -> None:
        nonlocal fitted
        target = targets.pop(names[mod], None)
        if target is not None:
            fitted += _solve(mod, _inputs_at(mod, args[0], target[1]), target[0], ridge)

    names = {pruned.get_submodule(name): name for name in layers}
    handles = [original.get_submodule(name).register_forward_hook(record(name)) for name in layers]
    original_device = device_of(original, None)
    try:
        original.to(dev)
        with modes_kept(original):
            original.eval()
            original(x)  # the targets: each layer's output on its kept channels at sampled positions
    finally:
        for h in handles:
            h.remove()
        original.to(original_device)
    handles = [m.register_forward_pre_hook(fit) for m in names]
    try:
        with modes_kept(pruned):
            pruned.eval()
            pruned(x)  # each layer is refitted just before it runs, on what the refitted layers before it give
    finally:
        for h in handles:
            h.remove()
    return {"layers": fitted, "candidates": len(layers), "images": len(x)}

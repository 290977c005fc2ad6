"""How much each connection matters: the importance priors the connection search starts from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcp.engine.modes import modes_kept
from lcp.errors import LcpError

if TYPE_CHECKING:
    from lcp.engine.connections import ConnectionGraph


def _standardised_log(score: np.ndarray) -> np.ndarray:
    z = np.log(score + 1e-12)
    sd = z.std()
    return (z - z.mean()) / sd if sd > 0 else np.zeros_like(z)


#: the name of the prior the connection search starts from, recorded in its state and in benchmark signatures
OUTPUT_SHARE = "tail output share"


def _measurable(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    conv = isinstance(mod, nn.modules.conv._ConvNd) and not isinstance(mod, nn.modules.conv._ConvTransposeNd)
    return conv and mod.groups == 1


def output_share_supported(cg: ConnectionGraph) -> bool:
    """Whether :func:`slice_output_share` can measure every consumer (linears and dense, not transposed, convs)."""
    modules = dict(cg.graph.gm.named_modules())
    return all(_measurable(modules[c.name]) for c in cg.consumers)


def slice_output_share(cg: ConnectionGraph, batches: Sequence[Tensor]) -> np.ndarray:
    """Per connection s -> c, the share of consumer c's output energy (sum of squares over ``batches``, bias
    left out) that s's input slice produces alone: ``||W[:, slice] x[slice]||^2 / ||W x||^2``, with x the
    consumer's input as the network computes it (after its private norm and activation). The slice's output is
    the module's own convolution (``_conv_forward``: padding mode included) with the sliced weight; a conv whose
    ``forward`` does more (timm's ``StdConv2d`` standardises its weight) is measured as that plain convolution.
    Raises LcpError for a consumer it cannot measure (:func:`output_share_supported`)."""
    gm = cg.graph.gm
    modules = dict(gm.named_modules())
    own = np.zeros(cg.n)
    total = np.zeros(len(cg.consumers))
    for c in cg.consumers:
        if not _measurable(modules[c.name]):
            raise LcpError(f"cannot measure the output share of {c.name} ({type(modules[c.name]).__name__})")

    def hook(ci: int, consumer: nn.Module):
        sources = [(k, torch.as_tensor(cg.connections[k].positions)) for k in cg.consumers[ci].sources]

        def measure(mod: nn.Module, inputs: tuple, _out: Tensor) -> None:
            x = inputs[0]
            dim = -1 if isinstance(mod, nn.Linear) else 1
            total[ci] += float(_linear_part(mod, x, None).pow(2).sum())
            for k, pos in sources:
                pos = pos.to(x.device)
                own[k] += float(_linear_part(mod, x.index_select(dim, pos), pos).pow(2).sum())

        return consumer.register_forward_hook(measure)

    handles = [hook(ci, modules[c.name]) for ci, c in enumerate(cg.consumers)]
    try:
        with modes_kept(gm), torch.inference_mode():
            gm.eval()
            device = next(gm.parameters()).device
            for x in batches:
                gm(x.to(device))
    finally:
        for h in handles:
            h.remove()
    return own / np.maximum(total[cg.dst], 1e-30)


def _linear_part(mod: nn.Module, x: Tensor, positions: Tensor | None) -> Tensor:
    """The consumer's output without its bias, from the input positions given (all when None)."""
    w = mod.weight if positions is None else mod.weight[:, positions]
    if isinstance(mod, nn.Linear):
        return F.linear(x, w)
    return mod._conv_forward(x, w, None)


def connection_prior(cg: ConnectionGraph, batches: Sequence[Tensor] | None = None) -> np.ndarray:
    """The importance prior of every connection, log-scaled and standardised over all connections (0 where every
    connection scores the same); higher means keep.

    With ``batches`` (training images): the *tail share* of a connection, the share of its consumer's output
    energy (:func:`slice_output_share`) lost if it and every connection of the same consumer that produces less
    were dropped, so ranking by it drops each consumer's least-used inputs first and no consumer that stays
    alive loses more than a common share (summing solo shares, cross terms ignored). Without: CondenseNet's slice-L1
    (``ConnectionGraph.slice_l1``), the weights alone.
    """
    if batches is None:
        return _standardised_log(cg.slice_l1())
    share = slice_output_share(cg, batches)
    tail = np.zeros(cg.n)
    for c in cg.consumers:
        k = np.asarray(c.sources)
        order = np.argsort(share[k], kind="stable")
        tail[k[order]] = np.cumsum(share[k[order]])
    # a slice that produces nothing would sit ~28 standard units low and squeeze every other score
    return _standardised_log(np.maximum(tail, 1e-6))

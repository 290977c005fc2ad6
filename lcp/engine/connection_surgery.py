"""Connection surgery: build the DenseNet without the dropped connections, and verify it (see ``connections``).

Kept input positions of every consumer are gathered (``index_select`` on the channel dim) in a
``torch.fx.GraphModule``; a consumer nobody reads any more becomes a :class:`ZeroConv` and loses its private norm.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_map_only

from lcp.engine.cost import count_macs, count_params
from lcp.engine.graph import retrace
from lcp.engine.layers import LAYERS, delete_module, prune_norm, select_positions, set_param
from lcp.engine.surgery import Verification, input_mask_hook, output_tensors, relative_error
from lcp.engine.types import LayerKind
from lcp.errors import LcpError

if TYPE_CHECKING:
    from lcp.engine.connections import ConnectionGraph


class ZeroConv(nn.Module):
    """Stands in for a dead conv: zeros of the conv's output shape (its input only gives N, H, W)."""

    def __init__(
        self,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        dilation: tuple[int, ...],
    ):
        super().__init__()
        self.out_channels = out_channels
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(x.shape[2:], self.kernel_size, self.stride, self.padding, self.dilation)
        ]
        return x.new_zeros((x.shape[0], self.out_channels, *sizes))

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"


def apply_connections(cg: ConnectionGraph, keep: np.ndarray) -> fx.GraphModule:
    """A pruned copy of the model (GraphModule) without the dropped connections; the original is untouched."""
    keep = np.asarray(keep, dtype=bool)
    alive = cg.check(keep)
    recs = cg.graph.records
    model = copy.deepcopy(cg.graph.model)
    was_training = model.training
    gm = retrace(model, cg.graph.rules)
    nodes = {n.name: n for n in gm.graph.nodes}
    by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    for ci, c in enumerate(cg.consumers):
        r = recs[c.record]
        m = gm.get_submodule(c.name)
        node = by_target[c.name]
        at = nodes[c.norm_node]
        if not alive[ci]:
            src = at.args[0]
            gm.set_submodule(c.name, ZeroConv(m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation))
            node.args = (src,) + tuple(node.args[1:])
            continue
        kept = np.sort(np.concatenate([cg.connections[k].positions for k in c.sources if keep[k]]))
        if len(kept) == len(r.in_ids):
            continue
        set_param(m, "weight", select_positions(m.weight, 1, kept))
        if c.kind == LayerKind.CONV:
            m.in_channels = len(kept)
        else:
            m.in_features = len(kept)
        if c.norm is not None:
            prune_norm(gm.get_submodule(recs[c.norm].name), len(r.in_ids), kept)
        buf = f"_lcp_keep_{ci}"
        gm.register_buffer(buf, torch.as_tensor(kept, dtype=torch.long), persistent=False)
        with gm.graph.inserting_before(at):
            idx = gm.graph.get_attr(buf)
            sel = gm.graph.call_function(torch.index_select, (at.args[0], c.gather_dim, idx))
        at.args = (sel,) + tuple(at.args[1:])
    gm.graph.eliminate_dead_code()
    gm.recompile()
    for ci, c in enumerate(cg.consumers):  # private norms of dead consumers are gone from the graph
        if not alive[ci] and c.norm is not None:
            delete_module(gm, recs[c.norm].name)
    gm.train(was_training)
    return gm


def masked_connections(cg: ConnectionGraph, keep: np.ndarray) -> tuple[nn.Module, list]:
    """A float64 copy of the original whose consumers see dropped connections as zeros."""
    keep = np.asarray(keep, dtype=bool)
    ref = copy.deepcopy(cg.graph.model).double().eval()
    modules = dict(ref.named_modules())
    handles = []
    for c in cg.consumers:
        n_in = len(cg.graph.records[c.record].in_ids)
        mask = torch.zeros(n_in, dtype=torch.float64)
        for k in c.sources:
            if keep[k]:
                mask[torch.as_tensor(cg.connections[k].positions)] = 1.0
        if bool(mask.all()):
            continue
        handles.append(modules[c.name].register_forward_pre_hook(input_mask_hook(mask, LAYERS[c.kind].input_dim)))
    return ref, handles


def verify_connections(
    cg: ConnectionGraph, keep: np.ndarray, pruned: nn.Module, *, rtol: float = 1e-6, seed: int = 0
) -> Verification:
    """Compare ``pruned`` with the masked original in float64 on random input."""
    gen = torch.Generator().manual_seed(seed)
    inputs = tree_map_only(
        torch.Tensor, lambda x: torch.randn(x.shape, generator=gen, dtype=torch.float64), tuple(cg.graph.example_inputs)
    )
    ref, handles = masked_connections(cg, keep)
    test = copy.deepcopy(pruned).double().eval()
    try:
        with torch.no_grad():
            a, b = output_tensors(ref(*inputs)), output_tensors(test(*inputs))
    finally:
        for h in handles:
            h.remove()
    if not (len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))):
        return Verification(float("inf"), False, False)
    err = relative_error(a, b)
    return Verification(err, True, err <= rtol)


def prune_connections(
    cg: ConnectionGraph, keep: np.ndarray, *, check_cost: bool = True
) -> tuple[fx.GraphModule, Verification]:
    """Build and verify; refuses (LcpError) when the result differs from the masked original or the cost model."""
    pruned = apply_connections(cg, keep)
    v = verify_connections(cg, keep, pruned)
    if not v.ok:
        raise LcpError(f"connection surgery failed verification against the masked original: {v}")
    if check_cost:
        macs, params = cg.evaluate(keep)
        real = (count_macs(pruned, cg.graph.example_inputs), count_params(pruned))
        if real != (macs, params):
            raise LcpError(f"internal: connection cost model {macs, params} differs from the built network {real}")
    return pruned, v

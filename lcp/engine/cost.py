"""Exact MACs and parameter counts of any pruned configuration, without building it.

Convention (as in the LcP/LeGR papers, extended to functional ops): MACs are the multiply-accumulates of every
convolution and matrix product, per sample (batch 1): ``out_positions * kernel * in_channels_per_group *
out_channels`` for a conv, ``tokens * in_features * out_features`` for a linear, and the products of activations
(attention's ``q @ k^T`` and ``attn @ v``) as torch's ``FlopCounterMode`` counts them (its FLOPs / 2). Biases,
norms, activations, pooling and other elementwise ops are not counted. What the channel graph does not model
(functional products, convs inside untracked modules) is a constant of the cost model: the budget applies to
the whole network, and a cut that changes such a constant is refused by the re-count after surgery.
Params are all parameters of the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from lcp.engine.graph import ChannelGraph, check_batch, input_batch, run_failure
from lcp.engine.layers import LAYERS
from lcp.engine.modes import modes_kept
from lcp.engine.types import Record
from lcp.errors import LcpError


def count_macs(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of one forward pass, per sample of the batch (``graph.input_batch``: a list of
    unbatched images counts as one sample; see module docstring).

    Counted with the formulas of ``torch.utils.flop_counter`` (FLOPs / 2, what ``FlopCounterMode`` reports; a
    lean dispatch mode without its per-module bookkeeping, several times faster), in eval mode without
    gradients and with the fused multi-head-attention fast path off (torch does not count that kernel): every
    convolution, transposed convolution and matrix product, whether a module or a functional call carries its
    weight (``F.linear`` in attention blocks, ``scaled_dot_product_attention``, ``matmul`` / ``bmm``). Every
    submodule's train/eval flag is kept; a batch of 0 is refused (``LcpError``).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    check_batch(example_inputs)
    batch = input_batch(example_inputs)
    fastpath = _mha_fastpath(None)
    counter = _FlopCount()
    try:
        with modes_kept(model), torch.no_grad(), counter:
            model.eval()
            model(*example_inputs)
    except Exception:
        _mha_fastpath(fastpath)
        try:  # the model's own failure (wrong channels, dtype, device) is one line with torch's reason ...
            with modes_kept(model), torch.no_grad():
                model.eval()
                model(*example_inputs)
        except Exception as own:
            raise run_failure(model, example_inputs, own) from None
        raise  # ... a failure of the counting itself is lcp's, and stays a traceback to report
    finally:
        _mha_fastpath(fastpath)
    return int(counter.flops) // 2 // batch


class _FlopCount(TorchDispatchMode):
    """Sums torch's registered FLOP formulas over the ops a forward pass dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def _mha_fastpath(enabled: bool | None) -> bool | None:
    """Set torch's fused multi-head-attention fast path (None: turn it off); returns the previous setting."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        return None
    before = bool(mha.get_fastpath_enabled())
    mha.set_fastpath_enabled(False if enabled is None else enabled)
    return before


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def record_cost(rec: Record, n_out: int, n_in: int, n_norm_params: int) -> tuple[int, int]:
    """(MACs, params) of one record with ``n_out`` output and ``n_in`` input positions kept (its kind's handler)."""
    return LAYERS[rec.kind].cost(rec, n_out, n_in, n_norm_params)


class CostModel:
    """MACs and params of a model as units are removed, updated incrementally per removed unit.

    With a ``latency`` table (``lcp.cut.latency_table.LatencyTable``) it also predicts the latency in milliseconds
    (metric ``"latency"``): the table's constant plus every layer's interpolated timing at its current widths.
    """

    def __init__(self, graph: ChannelGraph, latency: LatencyTable | None = None):  # noqa: F821
        self.graph = graph
        self.latency_table = latency
        recs = graph.records
        self.full_out = [len(r.out_ids) if r.out_ids is not None else 0 for r in recs]
        self.full_in = [len(r.in_ids) if r.in_ids is not None else 0 for r in recs]
        modules = dict(graph.model.named_modules())
        self.handlers = [LAYERS[r.kind] for r in recs]
        self.norm_params = [h.norm_params(modules.get(r.name), r) for h, r in zip(self.handlers, recs)]
        full = [record_cost(r, o, i, n) for r, o, i, n in zip(recs, self.full_out, self.full_in, self.norm_params)]
        tracked_macs = sum(c[0] for c in full)
        tracked_params = sum(c[1] for c in full)
        self.macs_base = count_macs(graph.model, graph.example_inputs)
        self.params_base = count_params(graph.model)
        # cost outside tracked modules (convs inside untracked leaves, embeddings...) never changes
        self.macs_const = self.macs_base - tracked_macs
        # weight-standardized convs leave surgery as plain convs: their extra per-filter parameters go
        self.params_folded = sum(h.folded_params(modules.get(r.name)) for h, r in zip(self.handlers, recs))
        self.params_const = self.params_base - tracked_params - self.params_folded
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Back to the unpruned model."""
        self.n_out = list(self.full_out)
        self.n_in = list(self.full_in)
        self.rec_cost = [
            record_cost(r, o, i, n) for r, o, i, n in zip(self.graph.records, self.n_out, self.n_in, self.norm_params)
        ]
        self.macs = self.macs_base
        self.params = self.params_base - self.params_folded
        lt = self.latency_table
        if lt is not None:
            self.rec_ms = [lt.record_ms(i, o, n) for i, (o, n) in enumerate(zip(self.n_out, self.n_in))]
            self.latency = lt.const_ms + sum(self.rec_ms)

    def _apply(self, unit: int, sign: int) -> None:
        recs = self.graph.records
        for ri, axis, cnt in self.graph.units[unit].members:
            if axis == "out":
                self.n_out[ri] -= sign * cnt
            else:
                self.n_in[ri] -= sign * cnt
            new = self.handlers[ri].cost(recs[ri], self.n_out[ri], self.n_in[ri], self.norm_params[ri])
            old = self.rec_cost[ri]
            self.macs += new[0] - old[0]
            self.params += new[1] - old[1]
            self.rec_cost[ri] = new
            if self.latency_table is not None:
                ms = self.latency_table.record_ms(ri, self.n_out[ri], self.n_in[ri])
                self.latency += ms - self.rec_ms[ri]
                self.rec_ms[ri] = ms

    def remove(self, unit: int) -> None:
        self._apply(unit, +1)

    def restore(self, unit: int) -> None:
        self._apply(unit, -1)

    def min_kept(self, unit: int) -> int:
        """Smallest number of positions any module axis touched by ``unit`` would keep after removing it."""
        lo = 1 << 60
        for ri, axis, cnt in self.graph.units[unit].members:
            left = (self.n_out[ri] if axis == "out" else self.n_in[ri]) - cnt
            lo = min(lo, left)
        return lo

    def value(self, metric: str) -> float:
        if metric == "latency":
            self._need_latency()
            return self.latency
        return self.macs if metric == "macs" else self.params

    def base(self, metric: str) -> float:
        if metric == "latency":
            self._need_latency()
            return self.latency_table.base_ms
        return self.macs_base if metric == "macs" else self.params_base

    def _need_latency(self) -> None:
        if self.latency_table is None:
            raise LcpError(
                "a latency budget needs a measured latency table: CostModel(graph, latency="
                "LatencyTable.build(graph, ...))"
            )

    def evaluate(self, removed: np.ndarray) -> tuple[int, int]:
        """(MACs, params) of the configuration with units ``removed`` (bool per unit), from scratch."""
        self.reset()
        for u in np.nonzero(removed)[0].tolist():
            self.remove(u)
        out = (self.macs, self.params)
        self.reset()
        return out

    def widths(self) -> dict[str, tuple[int, int]]:
        """Current (out, in) kept positions per record name."""
        return {r.name: (self.n_out[i], self.n_in[i]) for i, r in enumerate(self.graph.records)}

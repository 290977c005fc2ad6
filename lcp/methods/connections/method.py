"""The registered methods ``ads`` and ``lwp``: search DenseNet connections on held-out data, then cut them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lcp.cut.pruner import PruneResult
from lcp.cut.ranking import Plan
from lcp.cut.transforms import Transforms
from lcp.engine.connection_importance import OUTPUT_SHARE, connection_prior, output_share_supported
from lcp.engine.connections import ConnectionGraph
from lcp.errors import LcpError
from lcp.io import PathLike, atomic_write_text
from lcp.methods.base import Context, Learned, Method, register_method
from lcp.methods.connections.controller import ControllerConfig, ControllerResult, search_connections, shaped_reward
from lcp.methods.options import episodes_for
from lcp.training.data import DataBundle
from lcp.training.train import recalibrate_bn


class HeldOut:
    """``evaluate(keep)``: build the pruned network, recalibrate BatchNorm on ``recal`` batches, then top-1 and
    mean cross-entropy on the held-out batches (never the test split)."""

    def __init__(
        self,
        cg: ConnectionGraph,
        recal: list[Tensor],
        eval_x: list[Tensor],
        eval_y: list[Tensor],
        device: str | torch.device = "cpu",
    ):
        self.device = dev = torch.device(device)  # where candidates run; the batches are moved there once
        self.cg, self.recal = cg, [x.to(dev) for x in recal]
        self.eval_x, self.eval_y = [x.to(dev) for x in eval_x], [y.to(dev) for y in eval_y]
        self.n = sum(len(y) for y in eval_y)
        if self.n == 0 or not recal:
            raise LcpError("the connection search needs held-out images and training batches")
        if any(bool((y < 0).any()) for y in eval_y):
            raise LcpError("the held-out images are unlabeled: methods ads and lwp need labels")

    def __call__(self, keep: np.ndarray) -> dict:
        model = self.cg.apply(keep).to(self.device)
        model.eval()
        with torch.inference_mode():
            recalibrate_bn(model, self.recal, batches=len(self.recal))
            correct, total = 0, 0.0
            for x, y in zip(self.eval_x, self.eval_y):
                out = model(x).float()
                total += float(F.cross_entropy(out, y, reduction="sum"))
                correct += int((out.argmax(1) == y).sum())
        return {"acc": correct / self.n, "loss": total / self.n}

    @classmethod
    def from_bundle(
        cls,
        cg: ConnectionGraph,
        bundle: DataBundle,
        *,
        recal_batches: int = 4,
        eval_images: int | None = 1000,
        batch_size: int = 128,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> HeldOut:
        recal = []
        for x, _ in bundle.loader("train", batch_size, shuffle=True, seed=seed):
            if len(recal) == recal_batches:
                break
            recal.append(x)
        xs, ys = [], []
        for x, y in bundle.loader("holdout", batch_size, limit=eval_images):
            xs.append(x)
            ys.append(y)
        return cls(cg, recal, xs, ys, device)


#: the evaluation that re-scores the search's best masks at the end: every held-out image, more BatchNorm
#: recalibration batches (the best of many noisy 1,000-image scores is optimistic)
FINAL_EVAL = {"eval_images": None, "recal_batches": 8}


def rescore(
    result: ControllerResult,
    evaluate: Callable[[np.ndarray], dict],
    *,
    method: str,
    cg: ConnectionGraph,
    budget: float,
    budget_type: str,
    cfg: ControllerConfig,
) -> list[dict]:
    """The search's best masks (``result.top``, the prior's among them) scored again with ``evaluate``, best
    first: {"episode", "reward" (the same reward on the new scores), "search_reward", "acc", "keep"}."""
    base = cg.base(budget_type)
    out = []
    for e in result.top:
        keep = np.asarray(e["keep"], dtype=bool)
        acc = float(evaluate(keep)["acc"])
        rho = cg.value(keep, budget_type) / base
        reward = shaped_reward(method, acc, rho, budget, cfg) if np.isfinite(acc) else -1.0
        out.append({"episode": e["episode"], "reward": reward, "search_reward": e["reward"], "acc": acc, "keep": keep})
    return sorted(out, key=lambda e: (-e["reward"], e["episode"]))


def write_controller_csv(history: list[dict], path: PathLike) -> None:
    """One row per episode (update, reward, best, acc, loss, cost, kept, alive, baseline, entropy, seconds),
    atomically."""
    cols = (
        "episode",
        "update",
        "reward",
        "best",
        "acc",
        "loss",
        "cost",
        "kept",
        "sampled_kept",
        "alive",
        "baseline",
        "entropy",
        "seconds",
    )
    lines = [",".join(cols)]
    for h in history:
        lines.append(
            ",".join("" if h.get(c) is None else (str(h[c]) if isinstance(h[c], int) else f"{h[c]:.6g}") for c in cols)
        )
    atomic_write_text(path, "\n".join(lines) + "\n")


def connection_graph(ctx: Context) -> ConnectionGraph:
    """The DenseNet connection graph of ``ctx.graph``, built once per context."""
    if "connections" not in ctx.cache:
        ctx.cache["connections"] = cg = ConnectionGraph(ctx.graph)
        ctx.log(f"{ctx.name or type(ctx.graph.model).__name__}: {cg.summary()}")
    return ctx.cache["connections"]


def cut_connections(ctx: Context, keep: np.ndarray, budget: float | None, label: str) -> PruneResult:
    """Remove the dense connections not in ``keep``: the pruned network, verified, with its cost as a ``Plan``
    (no channel unit removed) and what the outputs record (``info``: channels.json keys, report columns,
    ``connections.json``)."""
    cg, graph = connection_graph(ctx), ctx.graph
    t0 = time.perf_counter()
    pruned, verification = cg.prune(keep)
    macs, params = cg.evaluate(keep)
    alive = cg.alive(keep)
    ctx.log(
        f"kept {int(keep.sum())} of {cg.n} connections, {int(alive.sum())} of {len(alive)} consumers alive: "
        f"{macs / cg.macs_base:.3f} of MACs, {params / cg.params_base:.3f} of params; verified {verification}"
    )
    o = ctx.options
    plan = Plan(
        np.zeros(len(graph.units), dtype=bool),
        macs,
        params,
        cg.macs_base,
        cg.params_base,
        budget if budget is not None else 1.0,
        o.budget_type,
        label,
    )
    info = {
        "kind": "connections",
        "spec": {"removed_connections": cg.names(keep)},
        "columns": {
            "connections_kept": int(keep.sum()),
            "connections": cg.n,
            "verification_error": verification.max_rel_error,
        },
        "files": {
            "connections.json": {
                "reward": ctx.cache.get("connection_reward"),
                "rescored": ctx.cache.get("connection_rescored"),
                "kept": int(keep.sum()),
                "connections": cg.n,
                "removed": cg.names(keep),
                "dead": [c.name for c, a in zip(cg.consumers, alive) if not a],
                "blocks": cg.adjacency(keep),
            }
        },
    }
    return PruneResult(
        pruned,
        plan,
        graph,
        Transforms.identity(graph),
        verification,
        np.full(len(graph.units), np.nan),
        time.perf_counter() - t0,
        info,
    )


class _ConnectionMethod(Method):
    """An LSTM controller (REINFORCE) keeps or drops each dense connection at the budget."""

    budget_types = ("macs", "params")
    several_budgets = False
    signature_options = ("episodes",)
    learns_from_data = True
    reads = frozenset({"episodes"})
    removes_blocks = False  # ratios above the floor / connections: no residual branch is emptied
    ranks_by_time = False

    def check(self, options: Any, budgets: list[float | None]) -> None:
        if options.label_free:
            raise LcpError(f"method {self.name} rewards held-out accuracy: --label-free is not supported")
        super().check(options, budgets)

    def learn(self, ctx: Context) -> Learned:
        o = ctx.options
        cg = connection_graph(ctx)
        budget = o.all_budgets()[0]
        ccfg = ControllerConfig(episodes=episodes_for(self.name, o.episodes))
        reward = "held-out top-1" if self.name == "ads" else f"held-out top-1 + {ccfg.lwp_lambda:g} (1 - cost ratio)"
        ctx.log(
            f"searching connections: {self.name} controller, {ccfg.episodes} episodes at {budget:g} of "
            f"{o.budget_type}, reward {reward}"
        )
        ev = HeldOut.from_bundle(cg, ctx.need_data(self.name), seed=o.seed, device=o.device)
        # each slice's share of its consumer's output on the recalibration batches (training images)
        measured = ccfg.prior_weight > 0 and output_share_supported(cg)
        prior = connection_prior(cg, ev.recal) if measured else None
        if not measured and ccfg.prior_weight > 0:
            ctx.log("a consumer's output share cannot be measured: the search starts from the slice-L1 prior")
        write = ctx.writer and ctx.out is not None
        result = search_connections(
            cg,
            ev,
            method=self.name,
            budget=budget,
            budget_type=o.budget_type,
            cfg=ccfg,
            seed=o.seed,
            state_path=ctx.out / "controller_state.safetensors" if write else None,
            resume=o.resume,
            progress=o.progress,
            settings={"model": ctx.name, "weights": ctx.weights, **({"prior": OUTPUT_SHARE} if measured else {})},
            prior=prior,
        )
        if write:
            write_controller_csv(result.history, ctx.out / "controller.csv")
        final = HeldOut.from_bundle(cg, ctx.need_data(self.name), seed=o.seed, device=o.device, **FINAL_EVAL)
        top = rescore(result, final, method=self.name, cg=cg, budget=budget, budget_type=o.budget_type, cfg=ccfg)
        ctx.log(
            f"re-scored the {len(top)} best masks on {final.n} held-out images: episode {top[0]['episode']} "
            f"(0: the importance prior's), reward {top[0]['reward']:.4f} (in the search {top[0]['search_reward']:.4f})"
        )
        ctx.cache["connection_reward"] = top[0]["reward"]
        ctx.cache["connection_rescored"] = [
            {k: e[k] for k in ("episode", "reward", "search_reward", "acc")} for e in top
        ]
        return Learned(keep=top[0]["keep"])

    def cut(self, ctx: Context, learned: Learned, budget: float) -> PruneResult:
        return cut_connections(ctx, learned.keep, budget, self.name)


@register_method
class AdsMethod(_ConnectionMethod):
    name = "ads"
    summary = "(DenseNets) dense connections kept by an LSTM controller, held-out accuracy reward"


@register_method
class LwpMethod(_ConnectionMethod):
    name = "lwp"
    summary = "(DenseNets) dense connections kept by an LSTM controller, FLOPs-shaped reward"

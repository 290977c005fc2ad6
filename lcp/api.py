"""lcp's Python API: prune a model (optionally recover it on data), count its cost, save and load it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from lcp.engine.cost import CostModel
from lcp.engine.graph import build_graph
from lcp.errors import LcpError
from lcp.methods import legr as search
from lcp.cut import importance as imp
from lcp.cut.pruner import PruneResult, prune_graph
from lcp.cut.ranking import Transforms, check_budget
from lcp.report import REPORT_COLUMNS
from lcp.training.data import load_data
from lcp.training.train import evaluate, finetune, recalibrate_bn


def prune(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None, *,
          budget: float = 0.5, budget_type: str = "macs", method: str = "global", importance: str = "l2",
          aggregate: str = "mean", transforms: Transforms | None = None, round_to: int = 1, min_ratio: float = 0.1,
          seed: int = 0, check: bool = True, batches: Iterable | None = None, data: Any = None,
          finetune_epochs: int = 0, lr: float = 0.01, kd: bool = False, recal_batches: int = 20,
          candidates: int = 400, optimizer: str = "legr", progress: bool = False) -> PruneResult:
    """Prune ``model`` to ``budget`` x its baseline cost; returns a ``PruneResult`` whose ``.model`` is pruned.

    ``budget=0.5, budget_type="macs"`` keeps 50% of the baseline MACs. ``method``: ``global`` (plain global
    ranking), ``lcp`` (learned ``transforms``; searched on ``data`` when not given), ``uniform``, ``random``.
    Every result is verified against the masked original and its cost re-counted; a model lcp cannot prune
    safely raises ``LcpError``. The original model is not modified.

    With ``data`` (a data set name or ImageFolder path, an ``lcp.training.data.DataBundle``, or a dict with ``train``
    and ``test`` loaders) the pruned model's BatchNorm is recalibrated, it is evaluated before and after
    ``finetune_epochs`` of fine-tuning, and ``result.report`` is the one-row report as a pandas DataFrame.
    """
    check_budget(budget, budget_type)
    bundle = _bundle(data, model, example_inputs)
    if example_inputs is None:
        if bundle is None and not isinstance(data, dict):
            raise LcpError("pass example_inputs (e.g. torch.zeros(1, 3, 32, 32)) or data")
        size = bundle.input_size if bundle is not None else tuple(next(iter(data["train"]))[0].shape[1:])
        example_inputs = torch.zeros(1, *size)
    graph = build_graph(model, example_inputs)
    search_s = 0.0
    if method == "lcp" and transforms is None:
        if bundle is None:
            raise LcpError("method 'lcp' needs transforms or data (a DataBundle or data set) to learn them")
        t0 = time.perf_counter()
        cost = CostModel(graph)
        scores = imp.unit_scores(graph, imp.filter_scores(graph, importance), aggregate)
        fitness = search.make_fitness(graph, cost, scores, bundle, budget=budget, budget_type=budget_type,
                                      seed=seed)
        transforms = search.search(graph, scores, fitness, optimizer=optimizer, candidates=candidates, seed=seed,
                                   progress=progress).transforms
        search_s = time.perf_counter() - t0
    result = prune_graph(graph, budget=budget, budget_type=budget_type, method=method, importance=importance,
                         aggregate=aggregate, transforms=transforms, round_to=round_to, min_ratio=min_ratio,
                         seed=seed, check=check, batches=batches)
    if data is not None:
        _after_cut(result, model, bundle, data, dict(
            method=method, importance=importance, budget_type=budget_type, budget=budget, seed=seed,
            finetune_epochs=finetune_epochs, search_s=search_s), lr=lr, kd=kd, recal_batches=recal_batches,
            progress=progress)
    return result


def _bundle(data: Any, model: nn.Module, example_inputs: Any) -> Any:
    """A DataBundle from a data set name/path, or the bundle itself (None for plain loaders)."""
    if data is None or isinstance(data, dict):
        return None
    if isinstance(data, (str, Path)):
        size = tuple(example_inputs.shape[1:]) if isinstance(example_inputs, torch.Tensor) else (3, 32, 32)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        kw = {k: tuple(cfg[k]) for k in ("mean", "std") if k in cfg}
        return load_data(str(data), input_size=size, **kw)
    return data


def _after_cut(result: PruneResult, original: nn.Module, bundle: Any, data: Any, row: dict, *, lr: float,
               kd: bool, recal_batches: int, progress: bool) -> None:
    """Recalibrate BatchNorm, evaluate, fine-tune and attach the one-row report to ``result``."""
    import pandas as pd

    if bundle is not None:
        train, test = bundle.loader("train", 128, shuffle=True, seed=row["seed"]), bundle.loader("test", 256)
    else:
        train, test = data["train"], data["test"]
    top1_base = evaluate(original, test)["top1"]
    recalibrate_bn(result.model, train, batches=recal_batches)
    top1_noft = evaluate(result.model, test)["top1"]
    t0 = time.perf_counter()
    if row["finetune_epochs"] > 0:
        source = bundle if bundle is not None else (lambda epoch: data["train"])
        finetune(result.model, source, epochs=row["finetune_epochs"], lr=lr, teacher=original if kd else None,
                 seed=row["seed"], progress=progress)
    top1 = evaluate(result.model, test)["top1"] if row["finetune_epochs"] > 0 else top1_noft
    p = result.plan
    row.update(model=type(original).__name__, dataset=getattr(bundle, "source", "loaders"),
               macs_base=p.macs_base, macs_pruned=p.macs, macs_ratio=p.macs_ratio, params_base=p.params_base,
               params_pruned=p.params, params_ratio=p.params_ratio, top1_base=top1_base,
               top1_pruned_noft=top1_noft, top1_pruned=top1, prune_s=result.seconds,
               finetune_s=time.perf_counter() - t0)
    result.report = pd.DataFrame([{k: row.get(k) for k in REPORT_COLUMNS}])



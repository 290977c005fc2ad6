"""The post-cut stage, one for every method, the API and the command line.

``recover``: recalibrate BatchNorm -> evaluate -> fine-tune (distilling from the unpruned model with ``kd``) ->
evaluate. ``report_row``: the one-row report. ``write_outputs``: the run folder (weights, channels.json,
transforms.json, report.csv, layers.csv, widths.png and a method's own files), every file atomic.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lcp.cut.latency import median_error, paired_latency
from lcp.cut.pruner import PruneResult, group_widths
from lcp.errors import LcpError
from lcp.io import atomic_write_json
from lcp.models import store
from lcp.report import plot_widths, write_layers_csv, write_report
from lcp.training import train as training
from lcp.training.data import DataBundle
from lcp.training.evaluate import evaluate, recalibrate_bn
from lcp.training.options import refit_images
from lcp.training.reconstruct import reconstruct

Data = DataBundle | Mapping[str, Any]  # a DataBundle, or {"train": loader, "test": loader}


def _loaders(data: Data, options: Any) -> tuple[Any, Any, Any]:
    """(recalibration batches, test batches or None when unlabeled, fine-tuning source) of ``data``."""
    if isinstance(data, DataBundle):
        train = data.loader("train", options.batch_size, shuffle=True, augment=False, seed=options.seed)
        test = data.loader("test", 256) if len(data.test_x) else None
        return train, test, data
    return data["train"], data["test"], lambda epoch: data["train"]


def recover(
    result: PruneResult,
    original: nn.Module,
    data: Data,
    options: Any,
    *,
    done: dict | None = None,
    save: Callable[[dict], None] | None = None,
    ckpt: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Refit the cut layers to the original's outputs (``options.reconstruct_images``, ``reconstruct``; by default
    only a cut that is not fine-tuned), recalibrate BatchNorm on ``options.recal_batches`` training batches,
    evaluate, fine-tune for ``options.finetune_epochs`` (teacher ``original`` with ``options.kd``), evaluate;
    ``result.model`` ends on ``options.device``. ``done`` / ``save``: the accuracy before fine-tuning is kept there
    across ``--resume``; ``ckpt``: the fine-tuning checkpoint; ``log``: progress lines. Returns top1_pruned_noft,
    top1_pruned and finetune_s (NaN accuracies when the data has no labels), and reconstructed_layers (the layers
    refitted) when the cut was refitted."""
    pruned = result.model
    done = {} if done is None else done
    dev = options.device
    train, test, source = _loaders(data, options)
    if test is None and options.finetune_epochs > 0 and not options.kd:
        raise LcpError("the data has no labels: fine-tune with --kd (distillation) or pass --finetune-epochs 0")
    pruned.to(dev)
    refitted = {}
    images = refit_images(options)
    if images > 0:
        if log:  # minutes for a large network on a CPU
            log(
                f"refitting the cut's layers to the unpruned outputs on {images} training images (--reconstruct-images)"
            )
        refitted = reconstruct(
            pruned, original, result.graph, result.plan.removed, train, images=images, seed=options.seed, device=dev
        )
    if options.recal_batches > 0:
        recalibrate_bn(pruned, train, batches=options.recal_batches, device=dev)
    if "top1_pruned_noft" not in done:
        done["top1_pruned_noft"] = evaluate(pruned, test, device=dev)["top1"] if test is not None else float("nan")
        if save:
            save(done)
    t0 = time.perf_counter()
    top1 = done["top1_pruned_noft"]
    if options.finetune_epochs > 0:
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
        training.finetune(  # through the module, so that the fine-tuning step can be replaced (tests spy on it)
            pruned,
            source,
            epochs=options.finetune_epochs,
            lr=options.lr,
            batch_size=options.batch_size,
            teacher=original if options.kd else None,
            kd_alpha=options.kd_weight,
            ckpt_path=ckpt,
            resume=bool(options.resume and ckpt is not None and ckpt.is_file()),
            seed=options.seed,
            progress=options.progress,
            device=dev,
            channels_last=None if options.channels_last else False,
        )
        original.cpu()
        top1 = evaluate(pruned, test, device=dev)["top1"] if test is not None else float("nan")
    numbers = {
        "top1_pruned_noft": done["top1_pruned_noft"],
        "top1_pruned": top1,
        "finetune_s": time.perf_counter() - t0,
    }
    if refitted:
        numbers["reconstructed_layers"] = refitted["layers"]
    return numbers


def report_row(
    result: PruneResult,
    options: Any,
    *,
    model: str,
    dataset: str,
    budget: float | None,
    numbers: Mapping[str, Any],
    columns: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one-row report of a pruned network: what was asked, what it costs, how accurate it is."""
    p = result.plan
    connections = result.info.get("kind") == "connections"
    row = {
        "model": model,
        "dataset": dataset,
        "method": p.method,
        "importance": "" if connections or p.method == "structure-from" else options.importance,
        "budget_type": options.budget_type,
        "budget": budget,
        "macs_base": p.macs_base,
        "macs_pruned": p.macs,
        "macs_ratio": p.macs_ratio,
        "params_base": p.params_base,
        "params_pruned": p.params,
        "params_ratio": p.params_ratio,
        "finetune_epochs": options.finetune_epochs,
        "seed": options.seed,
        "prune_s": result.seconds,
        **numbers,
    }
    row["round_to"] = getattr(options, "round_to", 1)  # the width multiple (--round-to N, or what auto measured)
    row.update(result.info.get("columns", {}))
    row.update(columns or {})
    return row


#: relative standard error of the latency ratio above which the report's speedup is left out (a busy machine)
LATENCY_ERROR_LIMIT = 0.10


def latency_columns(
    result: PruneResult,
    original: nn.Module,
    input_size: tuple[int, ...],
    options: Any,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Measured latency of the original and the pruned network (batch ``--latency-batch``) and the speedup, with
    the relative standard error of the ratio (``latency_error``). Rounds that disagree (other load on the machine)
    are timed again, twice at most; if the error stays above ``LATENCY_ERROR_LIMIT`` the columns are left empty
    and ``log`` says so, rather than a speed-up that is noise."""
    info = result.info
    if "latency_base_ms" in info:
        base, new, ratio = info["latency_base_ms"], info["latency_pruned_ms"], info["latency_ratio"]
        cols = {"latency_base_ms": base, "latency_pruned_ms": new, "speedup": 1 / ratio}
        return cols | ({"latency_error": info["latency_error"]} if "latency_error" in info else {})
    rounds, base_ms, new_ms = [], [], []
    for _ in range(3):
        t = paired_latency(
            result.model,
            original,
            input_size,
            batch=options.latency_batch,
            device=options.device,
            n_threads=options.threads,
        )
        rounds += t["rounds"]
        base_ms.append(t["reference_ms"])
        new_ms.append(t["median_ms"])
        error = median_error(rounds)
        if error <= LATENCY_ERROR_LIMIT / 2:
            break
    if error > LATENCY_ERROR_LIMIT:
        log(
            f"latency not reported: the timing rounds disagree (standard error {error:.0%} of the ratio; other "
            f"load on the machine?); time the saved network with lcp bench on a quiet machine"
        )
        nan = float("nan")
        return {"latency_base_ms": nan, "latency_pruned_ms": nan, "speedup": nan, "latency_error": error}
    ratio = statistics.median(rounds)
    base, new = statistics.median(base_ms), statistics.median(new_ms)
    return {"latency_base_ms": base, "latency_pruned_ms": new, "speedup": 1 / ratio, "latency_error": error}


def write_outputs(
    out: Path,
    result: PruneResult,
    original: nn.Module,
    row: dict[str, Any],
    *,
    model_name: str,
    num_classes: int,
    input_size: tuple[int, ...],
    spec_extra: Mapping[str, Any],
) -> Any:
    """The run folder: model.safetensors and channels.json (all that rebuilds the network), transforms.json,
    report.csv, layers.csv, widths.png and the method's own files (``result.info["files"]``), each atomic.
    Returns the report as a one-row DataFrame."""
    p, graph = result.plan, result.graph
    pruned = result.model.cpu()
    connections = result.info.get("kind") == "connections"
    spec = store.channels_spec(
        graph,
        p.removed,
        pruned,
        model_name=model_name,
        num_classes=num_classes,
        input_size=input_size,
        extra={
            "budget": row["budget"],
            "budget_type": row["budget_type"],
            "method": p.method,
            "macs": p.macs,
            "params": p.params,
            **spec_extra,
            **result.info.get("spec", {}),
        },
    )
    store.write(out, pruned, spec)
    for name, content in result.info.get("files", {}).items():
        atomic_write_json(out / name, content)
    report = write_report(row, out / "report.csv")
    if not connections:
        atomic_write_json(out / "transforms.json", result.transforms.to_json())
        rows = group_widths(graph, p.removed)
        for r, g in zip(rows, graph.groups):
            r["alpha"] = float(result.transforms.alpha[g.index])
            r["kappa"] = float(result.transforms.kappa[g.index])
            if "agent_ratios" in result.info:  # the learned ratio (before scaling to this budget)
                r["agent_ratio"] = float(result.info["agent_ratios"][g.index])
        write_layers_csv(rows, out / "layers.csv")
    before, after = store.widths(original), store.widths(pruned)
    layers = [(n, w[0], after[n][0]) for n, w in before.items() if n in after and len(w) >= 2]
    plot_widths(layers, out / "widths.png", title=f"{model_name}: output channels before and after pruning")
    return report

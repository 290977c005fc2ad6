"""The main job: model + data -> method (learn once, cut to each budget) -> post-cut stage -> outputs.

``run_prune`` runs a ``PruneConfig`` and writes ``model.safetensors``, ``channels.json``, ``transforms.json``,
``report.csv``, ``layers.csv`` and ``widths.png`` into the output folder (one sub-folder per budget with
``--budgets``). Stage results are kept in ``state.json`` so ``--resume`` skips what is done.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lcp.cut.alignment import resolve_round_to
from lcp.cut.options import caps_from, check_budget
from lcp.engine.depth import allow_depth
from lcp.engine.graph import ChannelGraph, build_graph
from lcp.errors import LcpError
from lcp.io import atomic_path, atomic_write_json, read_json
from lcp.methods import Context, ForeignOptionError, Learned, Method, get_method
from lcp.methods.structure import STRUCTURE_METHOD, open_structure
from lcp.run.config import PruneConfig, require_device
from lcp.run.folder import RunLock, claim, prepare_out_dir, resumable_work
from lcp.run.load import Loaded, baseline_accuracy, load_model_and_data
from lcp.run.recover import latency_columns, recover, report_row, write_outputs
from lcp.training.distributed import distributed

Log = Callable[[str], None]


def _method(cfg: PruneConfig) -> Method:
    return get_method(STRUCTURE_METHOD if cfg.structure_from else cfg.method)


def _lock(cfg: PruneConfig) -> Any:
    """The output folder's lock; under torchrun only rank 0 owns the folder."""
    return RunLock(cfg.out) if distributed(cfg.device)[1] == 0 else contextlib.nullcontext()


def _claim(cfg: PruneConfig) -> contextlib.AbstractContextManager:
    return claim(Path(cfg.out), _lock(cfg))


def _open_run(cfg: PruneConfig, log: Log, finished: Callable[[Path], bool]) -> tuple[Path, dict, Callable[..., None]]:
    """Prepare the output folder (caller holds its lock) and the resumable stage state. A rerun of an
    interrupted run without ``--resume`` starts over, and says what it could have continued."""
    out = Path(cfg.out)
    writer = distributed()[1] == 0
    state_path = out / "state.json"
    if writer:
        again = [] if cfg.resume or cfg.overwrite or finished(out) else resumable_work(out)
        prepare_out_dir(out, cfg.signature(), resume=cfg.resume, overwrite=cfg.overwrite)
        if again:  # the signature matched: the same run, interrupted
            log(
                f"{out} holds an interrupted run of these settings ({', '.join(again[:3])}); starting it over "
                "(stop now and add --resume to continue it)"
            )
    state = read_json(state_path, what="state.json") if (cfg.resume and state_path.is_file()) else {}

    def save_state(**kw: Any) -> None:
        state.update(kw)
        if writer:
            atomic_write_json(state_path, state)

    return out, state, save_state


def _budget_dir(out: Path, budgets: list[float | None], budget: float | None) -> Path:
    """Where one budget's outputs go: ``out`` itself for a single budget, else ``out/budget_B``."""
    return out if len(budgets) == 1 else out / f"budget_{budget:g}"


def _all_written(budgets: list[float | None], out: Path) -> bool:
    """Whether the run in ``out`` wrote every budget's outputs (its state.json says so)."""
    try:
        state = json.loads((out / "state.json").read_text())
        return all(state[f"budget_{b:g}"]["written"] for b in budgets)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _check(cfg: PruneConfig) -> Method:
    """Every option the run can check before it loads anything (one-line ``LcpError``)."""
    if cfg.structure_from:
        open_structure(cfg)  # options, model name, output folder
    for b in cfg.all_budgets():
        if b is not None:  # None: --structure-from without --budget
            check_budget(b, cfg.budget_type)
    names = [f"{b:g}" for b in cfg.all_budgets() if b is not None]  # as budget_B folders and state.json name them
    if len(set(names)) < len(names):
        raise LcpError(
            f"--budgets names a budget twice ({','.join(names)}; budgets equal to 6 significant digits share one "
            "output folder)"
        )
    require_device(cfg.device)
    method = _method(cfg)
    method.check(cfg, cfg.all_budgets())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return method


def channel_graph(cfg: PruneConfig, model: Any, input_size: tuple[int, ...]) -> ChannelGraph:
    """The model's channel graph with the run's protected layers (``--ignore``) and caps (``--max-removal``)."""
    graph = build_graph(model, torch.zeros(1, *input_size), ignore=cfg.ignore or ())
    graph.limit_removal(caps_from(cfg.max_removal))
    allow_depth(graph, cfg.depth)
    return graph


def _aligned(cfg: PruneConfig, graph: ChannelGraph, state: dict, save_state: Callable[..., None], log: Log) -> Any:
    """``cfg`` with ``--round-to auto`` measured once per run (kept in the state, so a resumed run cuts alike)."""
    cfg, found = resolve_round_to(cfg, graph, known=state.get("round_to"))
    if found is not None:
        log(found.describe())
        save_state(round_to=found.round_to)
    return cfg


def _context(
    cfg: PruneConfig,
    loaded: Loaded,
    graph: ChannelGraph,
    out: Path,
    state: dict,
    save_state: Callable[..., None],
    log: Log,
) -> Context:
    return Context(
        graph,
        cfg,
        loaded.bundle,
        out,
        log,
        name=loaded.name,
        weights=loaded.weights,
        writer=distributed()[1] == 0,
        state=state,
        save_state=save_state,
    )


def run_search(cfg: PruneConfig, log: Log = print) -> Any:
    """``lcp search``: learn the layer compensation only and write transforms.json (+ search.csv, plot)."""
    try:
        method = _check(cfg)
    except ForeignOptionError as e:  # a recipe's option: lcp search has no --method to choose
        users = ", ".join(e.users)
        raise LcpError(f"{e.flag} is an option of method {users}; lcp search would ignore it: drop it") from None
    with _claim(cfg):
        # the model, data and graph first: a bad checkpoint or pattern leaves an --overwrite folder as it was
        loaded = load_model_and_data(cfg, log)
        graph = channel_graph(cfg, loaded.model, loaded.input_size)
        out, state, save_state = _open_run(cfg, log, finished=lambda out: (out / "transforms.json").is_file())
        cfg = _aligned(cfg, graph, state, save_state, log)
        t0 = time.perf_counter()
        learned = method.learn(_context(cfg, loaded, graph, out, state, save_state, log))
        log(f"search took {time.perf_counter() - t0:.0f} s; transforms in {out / 'transforms.json'}")
        return learned.transforms


def run_prune(cfg: PruneConfig, log: Log = print) -> pd.DataFrame:
    """Run the whole job described by ``cfg``; returns the report (one row per budget)."""
    method = _check(cfg)
    with _claim(cfg):
        # the model, data and graph first: a bad checkpoint or pattern leaves an --overwrite folder as it was
        loaded = load_model_and_data(cfg, log)
        graph = channel_graph(cfg, loaded.model, loaded.input_size)
        out, state, save_state = _open_run(cfg, log, finished=lambda out: _all_written(cfg.all_budgets(), out))
        budgets = cfg.all_budgets()
        done = [_budget_dir(out, budgets, b) / "report.csv" for b in budgets]
        if cfg.resume and _all_written(budgets, out) and all(f.is_file() for f in done):  # nothing to search or cut
            for b, f in zip(budgets, done):
                log(f"budget {b:g}: finished in an earlier attempt; outputs in {f.parent}")
            return pd.concat([pd.read_csv(f) for f in done], ignore_index=True)
        cfg = _aligned(cfg, graph, state, save_state, log)
        ctx = _context(cfg, loaded, graph, out, state, save_state, log)
        t0 = time.perf_counter()
        learned = method.learn(ctx)
        save_state(search_s=state.get("search_s") or learned.seconds or time.perf_counter() - t0)
        ctx.options = cfg = method.run_options(ctx, learned)
        if "top1_base" not in state:
            save_state(top1_base=baseline_accuracy(loaded, device=cfg.device))
        budgets = cfg.all_budgets()
        reports = []
        for b in budgets:  # learn once, prune many: one folder per budget
            reports.append(_prune_to(ctx, method, learned, b, _budget_dir(out, budgets, b), loaded))
        reports = [r for r in reports if r is not None]
        if not reports:
            return pd.DataFrame()
        report = pd.concat(reports, ignore_index=True)
        if len(budgets) > 1:
            with atomic_path(out / "report.csv") as tmp:
                report.to_csv(tmp, index=False)
        return report


def _log_budget(ctx: Context, budget: float, result: Any) -> None:
    o, p = ctx.options, result.plan
    if o.budget_type == "latency":
        info = result.info
        ctx.log(
            f"budget {budget:g} keeps {budget:.0%} of the baseline latency at batch {o.latency_batch} on "
            f"{o.device} ({info['latency_base_ms']:.2f} ms -> {info['latency_pruned_ms']:.2f} ms measured)"
        )
    elif budget is not None and p.method != STRUCTURE_METHOD:
        base = p.macs_base if o.budget_type == "macs" else p.params_base
        ctx.log(
            f"budget {budget:g} keeps {budget:.0%} of the baseline {o.budget_type} "
            f"({base / 1e6:.2f}M -> at most {budget * base / 1e6:.2f}M)"
        )
    if result.info.get("kind") != "connections" and p.method != STRUCTURE_METHOD:
        ctx.log(f"pruned {ctx.name} with method {p.method}: {p.describe()}; verified {result.verification}")


def _prune_to(ctx: Context, method: Method, learned: Learned, budget: float, out: Path, loaded: Loaded) -> Any:
    """Cut to one budget, then the post-cut stage (recalibrate, evaluate, fine-tune, evaluate) and that budget's
    outputs in ``out``."""
    cfg, state = ctx.options, ctx.state
    key = f"budget_{budget:g}"
    if state.get(key, {}).get("written") and (out / "report.csv").is_file():  # finished before an interruption
        ctx.log(f"budget {budget:g}: finished in an earlier attempt; outputs in {out}")
        return pd.read_csv(out / "report.csv")
    t0 = time.perf_counter()
    result = method.cut(ctx, learned, budget)
    prune_s = time.perf_counter() - t0
    _log_budget(ctx, budget, result)
    done = dict(state.get(key, {}))
    numbers = recover(
        result,
        loaded.model,
        loaded.bundle,
        cfg,
        done=done,
        save=lambda d: ctx.save_state(**{key: d}),
        ckpt=out / "finetune.ckpt",
        log=ctx.log,
    )
    refit = (
        f" (after refitting {numbers['reconstructed_layers']} layers to the original's outputs)"
        if numbers.get("reconstructed_layers")
        else ""
    )
    ctx.log(
        f"top-1: baseline {state['top1_base']:.2f}%, pruned before fine-tuning {numbers['top1_pruned_noft']:.2f}%"
        + refit
    )
    if distributed()[1] != 0:  # torchrun: rank 0 writes the outputs
        return None
    result.seconds = prune_s
    row = report_row(
        result,
        cfg,
        model=loaded.name,
        dataset=loaded.dataset,
        budget=budget,
        numbers={"top1_base": state["top1_base"], **numbers, "search_s": state["search_s"]},
        columns=learned.columns,
    )
    row.update(latency_columns(result, loaded.model, loaded.input_size, cfg, log=ctx.log))
    report = write_outputs(
        out,
        result,
        loaded.model,
        row,
        model_name=loaded.name,
        num_classes=loaded.num_classes if loaded.num_classes is not None else loaded.bundle.num_classes,
        input_size=loaded.input_size,
        spec_extra={"dataset": loaded.dataset, "data": loaded.data_spec, **learned.columns},
    )
    (out / "finetune.ckpt").unlink(missing_ok=True)
    ctx.save_state(**{key: {**state.get(key, {}), "written": True}})  # a resumed --budgets run skips it
    ctx.log(f"top-1 after {cfg.finetune_epochs} fine-tuning epochs: {numbers['top1_pruned']:.2f}%; outputs in {out}")
    return report

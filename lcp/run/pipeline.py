"""The main job: model + data -> ranking -> cut -> recalibrate -> fine-tune -> evaluate -> outputs.

``PruneConfig`` holds every option of ``lcp prune`` (the CLI only fills it); ``run_prune`` runs it and writes
``model.safetensors``, ``channels.json``, ``transforms.json``, ``report.csv``, ``layers.csv`` and
``widths.png`` into the output folder. Stage results are kept in ``state.json`` so ``--resume`` skips what
is done.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lcp.models import store
from lcp.engine.connections import CONNECTION_METHODS
from lcp.errors import LcpError
from lcp.engine.graph import ChannelGraph, build_graph
from lcp.io import RunLock, atomic_path, atomic_write_json, prepare_out_dir, read_json
from lcp.cut.ranking import AGENT_METHODS, Transforms, check_budget
from lcp.report import plot_widths, write_layers_csv, write_report


@dataclass
class PruneConfig:
    """Options of one prune run (see ``lcp prune --help``)."""

    model: str = "resnet56"
    budget: float = 0.5
    budgets: list[float] | None = None  # several budgets from one search: one output folder each
    budget_type: str = "macs"
    method: str = "lcp"
    importance: str = "l2"
    aggregate: str = "mean"
    transforms: str | None = None
    data: str | None = None
    checkpoint: str | None = None
    pretrained: bool = False  # timm / torchvision hub weights (online) when no checkpoint is given
    input_size: list[int] | None = None  # C, H, W; default: the model's (timm: pretrained_cfg)
    out: str = "runs/prune"
    finetune_epochs: int = 1
    lr: float = 0.01
    batch_size: int = 128
    kd: bool = False
    recal_batches: int = 20
    holdout: int = 5000
    round_to: int = 1
    min_ratio: float = 0.1
    baseline_epochs: int = 30
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    latency_batch: int = 1
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    # search (used when method is lcp and no transforms file is given)
    search_budget: float | None = None
    candidates: int = 400
    population: int = 64
    tournament: int = 16
    optimizer: str = "legr"
    compensation: str = "affine"
    tau: int = 0
    label_free: bool = False
    workers: int = 1
    executor: str | None = None
    # agent methods lfgcl / amc (lcp.methods.ddpg)
    episodes: int = 30
    warmup_episodes: int = 10
    # --structure-from DIR: the removed units (connections) of an earlier run, no search (lcp.methods.structure); budget
    # None (the CLI without --budget): the structure's cost is not compared with a budget
    structure_from: str | None = None

    def signature(self) -> dict[str, Any]:
        """What identifies the run's result (an output folder holds one signature)."""
        keys = ("model", "budget", "budgets", "budget_type", "method", "importance", "aggregate", "transforms", "data",
                "checkpoint", "finetune_epochs", "lr", "batch_size", "kd", "round_to", "min_ratio", "seed",
                "search_budget", "candidates", "population", "tournament", "optimizer", "compensation", "tau", "label_free")
        sig = {k: getattr(self, k) for k in keys}
        sig.update({k: getattr(self, k) for k in ("pretrained", "input_size") if getattr(self, k)})  # when set
        if self.structure_from:  # the folder and its channels.json as they are now
            spec = Path(self.structure_from).expanduser().resolve() / "channels.json"
            sig.update(structure_from=str(spec.parent), structure=_file_digest(str(spec)) if spec.is_file() else None)
        if self.method in AGENT_METHODS:
            sig.update(episodes=self.episodes, warmup_episodes=self.warmup_episodes)
        elif self.method in CONNECTION_METHODS:
            sig.update(episodes=self.episodes)
        return sig

    def latency_options(self) -> dict[str, Any]:
        return {"batch": self.latency_batch, "device": self.device, "n_threads": self.threads}

    def all_budgets(self) -> list[float]:
        return list(self.budgets) if self.budgets else [self.budget]

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


Log = Callable[[str], None]


@dataclass
class TrainConfig:
    """Options of ``lcp train``: a baseline trained from scratch (see ``lcp train --help``)."""

    model: str = "densenet40"
    data: str | None = None
    input_size: list[int] | None = None
    epochs: int = 30
    lr: float = 0.1
    schedule: str = "onecycle"
    batch_size: int = 128
    weight_decay: float = 5e-4
    holdout: int = 5000  # kept out of training: the searches' fitness split
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    out: str = "runs/train"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def signature(self) -> dict[str, Any]:
        keys = ("model", "data", "input_size", "epochs", "lr", "schedule", "batch_size", "weight_decay", "holdout",
                "seed")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


@dataclass
class Loaded:
    """A model with its weights, its data and where the weights came from."""

    model: nn.Module
    name: str
    dataset: str
    bundle: Any
    input_size: tuple[int, int, int]
    weights: str
    info: Any = None
    data_spec: str = ""  # "cifar10" or the absolute ImageFolder path
    extra: dict = field(default_factory=dict)


def run_train(cfg: TrainConfig, log: Log = print) -> "pd.DataFrame":  # noqa: F821
    """``lcp train``: train ``cfg.model`` from scratch on the train split (held-out images excluded), with a
    checkpoint per epoch (``--resume``); writes ``model.safetensors`` and ``report.csv`` (test top-1) to ``out``."""
    from lcp.training.data import load_data
    from lcp.io import save_tensors
    from lcp.models.factory import create_model, model_info
    from lcp.training.train import evaluate, train_baseline

    if cfg.epochs < 1:
        raise LcpError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.schedule not in ("onecycle", "cosine"):
        raise LcpError(f"--schedule must be onecycle or cosine, got {cfg.schedule!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = model_info(cfg.model)
    spec = cfg.data or info.default_dataset
    if spec is None:
        raise LcpError(f"{cfg.model} has no default data set: pass --data PATH (an ImageFolder root)")
    dataset = "cifar10" if str(spec).lower() == "cifar10" else Path(spec).name
    size = tuple(int(v) for v in cfg.input_size) if cfg.input_size else tuple(info.input_size)
    out = Path(cfg.out)
    with RunLock(out):
        prepare_out_dir(out, cfg.signature(), resume=cfg.resume, overwrite=cfg.overwrite)
        bundle = load_data(spec, input_size=size, mean=info.mean, std=info.std, holdout=cfg.holdout, seed=0)
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, num_classes=bundle.num_classes)
        ckpt = out / "training.safetensors"
        log(f"training {info.name} on {dataset} from scratch: {cfg.epochs} epochs, lr {cfg.lr:g} ({cfg.schedule}), "
            f"batch {cfg.batch_size}, {len(bundle.train_y)} training images, on {cfg.device}")
        t0 = time.perf_counter()
        hist = train_baseline(model, bundle, epochs=cfg.epochs, lr=cfg.lr, schedule=cfg.schedule,
                              batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, ckpt_path=ckpt,
                              resume=cfg.resume and ckpt.exists(), seed=cfg.seed, progress=cfg.progress,
                              device=cfg.device, eval_loader=bundle.loader("holdout", 256) if cfg.holdout else None)
        train_s = time.perf_counter() - t0
        test = evaluate(model, bundle.loader("test", 256), device=cfg.device)
        model.cpu()
        save_tensors(model.state_dict(), out / "model.safetensors")
        import pandas as pd

        rows = [{k: v for k, v in r.items()} for r in hist["history"]]
        with atomic_path(out / "history.csv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        row = {"model": info.name, "dataset": dataset, "epochs": cfg.epochs, "lr": cfg.lr, "schedule": cfg.schedule,
               "batch_size": cfg.batch_size, "train_images": len(bundle.train_y), "top1": round(test["top1"], 2),
               "loss": round(test["loss"], 4), "train_s": round(train_s, 1),
               "resumed_from_epoch": hist.get("resumed_from") or 0, "device": cfg.device, "seed": cfg.seed}
        report = pd.DataFrame([row])
        with atomic_path(out / "report.csv") as tmp:
            report.to_csv(tmp, index=False)
        ckpt.unlink(missing_ok=True)
        log(f"{info.name}: test top-1 {test['top1']:.2f}% after {cfg.epochs} epochs ({train_s:.0f} s); weights in "
            f"{out / 'model.safetensors'} (use with --checkpoint)")
        return report


def load_model_and_data(cfg: PruneConfig, log: Log = print) -> Loaded:
    """Resolve the model name, load the data and the model's weights (training a baseline if none exist)."""
    from lcp.training.data import load_data
    from lcp.models.factory import create_model, default_checkpoint, load_checkpoint, model_info

    info = model_info(cfg.model)
    spec = cfg.data or info.default_dataset
    if spec is None:
        raise LcpError(f"{cfg.model} has no default data set: pass --data PATH (an ImageFolder root)")
    dataset = "cifar10" if str(spec).lower() == "cifar10" else Path(spec).name
    size = tuple(int(v) for v in cfg.input_size) if cfg.input_size else tuple(info.input_size)
    transform = None
    if info.source == "timm" and min(size[1:]) > 64:
        transform = _timm_eval_transform(info, size)
    # lfgcl never reads labels: a folder of images without class folders (or train/) is loaded unlabeled
    flat = cfg.method == "lfgcl" and dataset != "cifar10" and not (Path(spec).expanduser() / "train").is_dir()
    bundle = load_data(spec, input_size=size, mean=info.mean, std=info.std, holdout=cfg.holdout,
                       seed=0, transform=transform, labeled=not flat)
    if flat and not cfg.checkpoint:
        raise LcpError(f"{spec} has no class folders: pass --checkpoint (the trained model to prune)")
    pretrained = cfg.pretrained and not cfg.checkpoint
    classes = _checkpoint_classes(cfg.model, cfg.checkpoint) if flat else bundle.num_classes
    model = create_model(cfg.model, num_classes=classes, pretrained=pretrained)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint, name=info.name)
        weights = str(cfg.checkpoint)
    elif pretrained:
        weights = f"pretrained:{info.name}"
    else:
        path = default_checkpoint(info.name, dataset)
        if path is None:
            path = _train_baseline(model, info.name, dataset, bundle, cfg, log)
        else:
            load_checkpoint(model, path, name=info.name)
        weights = str(path)
    model.eval()
    data_spec = "cifar10" if dataset == "cifar10" else str(Path(spec).expanduser().resolve())
    return Loaded(model, info.name, dataset, bundle, size, weights, info, data_spec)


def _checkpoint_classes(name: str, checkpoint: str) -> int | None:
    """Classifier size stored in ``checkpoint`` (its last Linear's rows), for data without classes."""
    from lcp.models.factory import _read_state_dict, _strip_prefix, create_model

    linears = [n for n, m in create_model(name).named_modules() if isinstance(m, nn.Linear)]
    state = {_strip_prefix(k): v for k, v in _read_state_dict(Path(checkpoint)).items()}
    weight = state.get(f"{linears[-1]}.weight") if linears else None
    return int(weight.shape[0]) if weight is not None else None


def _timm_eval_transform(info: Any, size: tuple[int, ...]) -> Any:
    """timm's eval transform from the model's pretrained_cfg (interpolation, crop_pct, mean, std) at ``size``."""
    import timm.data

    return timm.data.create_transform(input_size=size, interpolation=info.interpolation, mean=info.mean,
                                      std=info.std, crop_pct=info.crop_pct, is_training=False)


def _train_baseline(model: nn.Module, name: str, dataset: str, bundle: Any, cfg: PruneConfig, log: Log) -> Path:
    """Train a baseline when no weights exist, cache it in the user cache, and say so."""
    from lcp.io import save_tensors
    from lcp.io import cache_dir
    from lcp.training.train import train_baseline

    path = cache_dir() / "weights" / f"{name}_{dataset}.safetensors"
    if path.is_file():
        from lcp.models.factory import load_checkpoint
        load_checkpoint(model, path, name=name)
        return path
    log(f"no weights for {name} on {dataset} (no --checkpoint, nothing in $LCP_WEIGHTS or {path.parent}): "
        f"training a baseline for {cfg.baseline_epochs} epochs first")
    ckpt = path.with_suffix(".training")
    train_baseline(model, bundle, epochs=cfg.baseline_epochs, ckpt_path=ckpt, resume=ckpt.exists(),
                   seed=cfg.seed, progress=cfg.progress)
    save_tensors(model.state_dict(), path)
    ckpt.unlink(missing_ok=True)
    log(f"baseline saved to {path}")
    return path


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def baseline_accuracy(loaded: Loaded, batch_size: int = 256, device: str = "cpu") -> float:
    """Test top-1 of the unpruned model, cached per weights file and data set (NaN without a test split)."""
    from lcp.io import cache_dir
    from lcp.training.train import evaluate

    if len(loaded.bundle.test_x) == 0:
        return float("nan")

    weights = _file_digest(loaded.weights) if Path(loaded.weights).is_file() else loaded.weights  # or pretrained:
    key = f"{loaded.name}-{weights}-{hashlib.sha256(loaded.bundle.source.encode()).hexdigest()[:8]}"
    path = cache_dir() / "baseline_accuracy.json"
    cache = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        return float(cache[key])
    top1 = evaluate(loaded.model, loaded.bundle.loader("test", batch_size), device=device)["top1"]
    loaded.model.cpu()  # the channel graph and surgery work on the CPU copy
    cache[key] = top1
    try:
        atomic_write_json(path, cache)
    except LcpError:
        pass  # the cache is an optimisation only
    return top1


def _cost_and_scores(cfg: PruneConfig, graph: ChannelGraph) -> tuple[Any, Any]:
    """The cost model a search cuts candidates with (latency budgets: the per-layer latency table's
    prediction) and the unit scores it ranks."""
    from lcp.cut import importance as imp
    from lcp.engine.cost import CostModel

    table = None
    if cfg.budget_type == "latency":
        from lcp.cut.latency import LatencyTable

        table = LatencyTable.build(graph, **cfg.latency_options(), progress=cfg.progress)
    return CostModel(graph, latency=table), imp.unit_scores(graph, imp.filter_scores(graph, cfg.importance),
                                                            cfg.aggregate)


def learn_transforms(cfg: PruneConfig, graph: ChannelGraph, loaded: Loaded, budgets: list[float], out: Path,
                     log: Log) -> tuple[Transforms, float]:
    """Transforms for method ``lcp``: read ``--transforms`` or run the meta-learning search."""
    if cfg.transforms:
        return Transforms.from_json(read_json(cfg.transforms, what="transforms file"), graph), 0.0
    from lcp.methods import legr as search

    t0 = time.perf_counter()
    cost, scores = _cost_and_scores(cfg, graph)
    sb = [cfg.search_budget] if cfg.search_budget else sorted(set(budgets))
    log(f"learning the layer compensation: {cfg.optimizer} search, {cfg.candidates} candidates at "
        f"{', '.join(f'{b:g}' for b in sb)} of {cfg.budget_type}" + (" (mean held-out loss)" if len(sb) > 1 else ""))
    fitness = search.make_fitness(graph, cost, scores, loaded.bundle, budget=sb, budget_type=cfg.budget_type,
                                  tau=cfg.tau, label_free=cfg.label_free, seed=cfg.seed,
                                  min_ratio=cfg.min_ratio, round_to=cfg.round_to)
    from lcp.training.train import distributed

    writer = distributed()[1] == 0  # under torchrun every rank finds the same transforms; rank 0 writes
    result = search.search(graph, scores, fitness, optimizer=cfg.optimizer, compensation=cfg.compensation,
                           candidates=cfg.candidates, population=cfg.population, tournament=cfg.tournament,
                           seed=cfg.seed, state_path=out / "search_state.json" if writer else None, resume=cfg.resume,
                           progress=cfg.progress and writer, workers=cfg.workers, executor=cfg.executor)
    if writer:
        search.write_outputs(result, out)
        atomic_write_json(out / "transforms.json", result.transforms.to_json())
    return result.transforms, time.perf_counter() - t0


def learn_ratios(cfg: PruneConfig, graph: ChannelGraph, loaded: Loaded, budgets: list[float], out: Path,
                 log: Log) -> tuple[Any, float]:
    """Keep ratios per group for methods lfgcl / amc: the DDPG agent at the search budget (lcp.methods.ddpg)."""
    from lcp.methods import ddpg as agents
    from lcp.methods import legr as search

    if cfg.budget_type == "latency":
        raise LcpError(f"method {cfg.method} takes --budget-type macs or params, not latency")
    if cfg.method == "amc" and cfg.label_free:
        raise LcpError("method amc rewards held-out accuracy (labels); use --method lfgcl for the label-free reward")
    t0 = time.perf_counter()
    cost, scores = _cost_and_scores(cfg, graph)
    sb = cfg.search_budget or min(budgets)
    label_free = cfg.method == "lfgcl"
    log(f"learning keep ratios per group: {cfg.method} agent, {cfg.episodes} episodes ({cfg.warmup_episodes} "
        f"warm-up) at {sb:g} of {cfg.budget_type}, reward {'-KL to the unpruned outputs' if label_free else '-CE'}")
    fitness = search.make_fitness(graph, cost, scores, loaded.bundle, budget=sb, budget_type=cfg.budget_type,
                                  tau=cfg.tau, label_free=label_free, seed=cfg.seed, min_ratio=cfg.min_ratio,
                                  round_to=cfg.round_to, device=cfg.device)
    acfg = agents.AgentConfig(episodes=cfg.episodes, warmup=cfg.warmup_episodes)
    result = agents.search_ratios(graph, cost, scores, fitness, budget=sb, budget_type=cfg.budget_type,
                                  min_ratio=cfg.min_ratio, round_to=cfg.round_to, cfg=acfg, seed=cfg.seed,
                                  state_path=out / "agent_state.safetensors", resume=cfg.resume,
                                  progress=cfg.progress)
    agents.write_agent_csv(result.history, out / "agent.csv")
    atomic_write_json(out / "ratios.json", {"reward": result.best_reward, "groups": [
        {"group": g.name, "ratio": float(r)} for g, r in zip(graph.groups, result.ratios)]})
    return result.ratios, time.perf_counter() - t0


def _lock(cfg: PruneConfig) -> Any:
    """The output folder's lock; under torchrun only rank 0 owns the folder."""
    from lcp.training.train import distributed

    return RunLock(cfg.out) if distributed()[1] == 0 else contextlib.nullcontext()


@contextlib.contextmanager
def _claim(cfg: PruneConfig) -> Any:
    """Lock the output folder; if the run fails before writing anything, leave the folder as it was found."""
    out = Path(cfg.out)
    fresh = not (out / "run.json").exists()
    with _lock(cfg):
        try:
            yield
        except BaseException:
            if fresh and not any((out / n).exists() for n in ("report.csv", "search_state.json",
                                                              "agent_state.safetensors",
                                                              "controller_state.safetensors")):
                for name in ("run.json", "state.json"):
                    (out / name).unlink(missing_ok=True)
            raise


def _open_run(cfg: PruneConfig) -> tuple[Path, dict, Callable[..., None]]:
    """Prepare the output folder (caller holds its lock) and the resumable stage state."""
    from lcp.training.train import distributed

    out = Path(cfg.out)
    writer = distributed()[1] == 0
    if writer:
        prepare_out_dir(out, cfg.signature(), resume=cfg.resume, overwrite=cfg.overwrite)
    state_path = out / "state.json"
    state = read_json(state_path, what="state.json") if (cfg.resume and state_path.is_file()) else {}

    def save_state(**kw: Any) -> None:
        state.update(kw)
        if writer:
            atomic_write_json(state_path, state)

    return out, state, save_state


def run_search(cfg: PruneConfig, log: Log = print) -> Transforms:
    """``lcp search``: learn the layer compensation only and write transforms.json (+ search.csv, plot)."""
    for b in cfg.all_budgets():
        check_budget(b, cfg.budget_type)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with _claim(cfg):
        out, _, _ = _open_run(cfg)
        loaded = load_model_and_data(cfg, log)
        graph = build_graph(loaded.model, torch.zeros(1, *loaded.input_size))
        transforms, seconds = learn_transforms(cfg, graph, loaded, cfg.all_budgets(), out, log)
        log(f"search took {seconds:.0f} s; transforms in {out / 'transforms.json'}")
        return transforms


def run_prune(cfg: PruneConfig, log: Log = print) -> "pd.DataFrame":  # noqa: F821
    """Run the whole job described by ``cfg``; returns the report (one row per budget)."""
    import pandas as pd

    structure = None
    if cfg.structure_from:
        from lcp.methods.structure import open_structure

        structure = open_structure(cfg)
    budgets = cfg.all_budgets()
    for b in budgets:
        if b is not None:  # None: --structure-from without --budget
            check_budget(b, cfg.budget_type)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with _claim(cfg):
        out, state, save_state = _open_run(cfg)
        loaded = load_model_and_data(cfg, log)
        graph = build_graph(loaded.model, torch.zeros(1, *loaded.input_size))
        if structure is not None:  # a structure that does not fit is refused before the baseline is evaluated
            structure.fit(graph, cfg.budgets[0] if cfg.budgets else cfg.budget, cfg.budget_type, log)
        if "top1_base" not in state:
            save_state(top1_base=baseline_accuracy(loaded, device=cfg.device))
        if structure is not None:
            report = _prune_structure(structure.config(cfg), structure, graph, loaded, out, state, save_state, log)
            return report if report is not None else pd.DataFrame()
        if cfg.method in CONNECTION_METHODS:  # DenseNet connections (lcp.methods.controllers): own cut and outputs
            from lcp.methods.controllers import run_connection_prune

            return run_connection_prune(cfg, loaded, graph, out, state, save_state, log)
        search_s = state.get("search_s", 0.0)
        transforms = ratios = None
        if cfg.method == "lcp":
            transforms, dt = learn_transforms(cfg, graph, loaded, budgets, out, log)
            search_s = search_s or dt
            save_state(search_s=search_s)
        elif cfg.method in AGENT_METHODS:
            ratios, dt = learn_ratios(cfg, graph, loaded, budgets, out, log)
            search_s = search_s or dt
            save_state(search_s=search_s)
        reports = []
        for b in budgets:  # learn once, prune many: one folder per budget
            sub = out if len(budgets) == 1 else out / f"budget_{b:g}"
            reports.append(_prune_to(cfg, b, sub, graph, transforms, loaded, state, save_state, search_s, log,
                                     ratios=ratios))
        reports = [r for r in reports if r is not None]
        if not reports:
            return pd.DataFrame()
        report = pd.concat(reports, ignore_index=True)
        if len(budgets) > 1:
            from lcp.io import atomic_path

            with atomic_path(out / "report.csv") as tmp:
                report.to_csv(tmp, index=False)
        return report


def _prune_structure(cfg: PruneConfig, structure: Any, graph: ChannelGraph, loaded: Loaded, out: Path, state: dict,
                     save_state: Callable[..., None], log: Log) -> Any:
    """``--structure-from``: cut the units (connections) of a fitted ``transfer.Structure``, no search; then as
    every run (``cfg``: ``structure.config``)."""
    if structure.keep is not None:
        from lcp.methods.controllers import run_connection_prune

        return run_connection_prune(cfg, loaded, graph, out, state, save_state, log, keep=structure.keep,
                                    source=structure.columns())
    return _prune_to(cfg, cfg.budget, out, graph, None, loaded, state, save_state, 0.0, log, structure=structure)


def _prune_to(cfg: PruneConfig, budget: float, out: Path, graph: ChannelGraph, transforms: Transforms | None,
              loaded: Loaded, state: dict, save_state: Callable[..., None], search_s: float, log: Log,
              ratios: Any = None, structure: Any = None) -> Any:
    """Cut to one budget (or to ``structure``, a ``transfer.Structure``), recalibrate, evaluate, fine-tune and
    write that budget's outputs into ``out``."""
    from lcp.training.train import evaluate, finetune, recalibrate_bn

    key = f"budget_{budget:g}"
    done = dict(state.get(key, {}))
    unlabeled = len(loaded.bundle.test_x) == 0  # lfgcl on a folder without classes: no accuracy to measure
    if unlabeled and cfg.finetune_epochs > 0 and not cfg.kd:
        raise LcpError("the data has no labels: fine-tune with --kd (distillation) or pass --finetune-epochs 0")
    t0 = time.perf_counter()
    result = _cut(cfg, budget, graph, transforms, loaded, log, ratios, structure)
    prune_s = time.perf_counter() - t0
    dev = cfg.device
    pruned = result.model.to(dev)
    train = loaded.bundle.loader("train", cfg.batch_size, shuffle=True, augment=False, seed=cfg.seed)
    if cfg.recal_batches > 0:
        recalibrate_bn(pruned, train, batches=cfg.recal_batches, device=dev)
    test = loaded.bundle.loader("test", 256) if not unlabeled else None
    if "top1_pruned_noft" not in done:
        noft = evaluate(pruned, test, device=dev)["top1"] if test is not None else float("nan")
        done["top1_pruned_noft"] = noft
        save_state(**{key: done})
    log(f"top-1: baseline {state['top1_base']:.2f}%, pruned before fine-tuning {done['top1_pruned_noft']:.2f}%")
    t1 = time.perf_counter()
    ckpt = out / "finetune.ckpt"
    if cfg.finetune_epochs > 0:
        out.mkdir(parents=True, exist_ok=True)
        finetune(pruned, loaded.bundle, epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                 teacher=loaded.model if cfg.kd else None, ckpt_path=ckpt,
                 resume=cfg.resume and ckpt.is_file(), seed=cfg.seed, progress=cfg.progress, device=dev)
        loaded.model.cpu()
        top1 = evaluate(pruned, test, device=dev)["top1"] if test is not None else float("nan")
    else:
        top1 = done["top1_pruned_noft"]
    finetune_s = time.perf_counter() - t1
    from lcp.training.train import distributed

    if distributed()[1] != 0:  # torchrun: rank 0 writes the outputs
        return None
    report = write_outputs(cfg, budget, loaded, result, pruned, out, dict(
        top1_base=state["top1_base"], top1_pruned_noft=done["top1_pruned_noft"], top1_pruned=top1,
        search_s=search_s, prune_s=prune_s, finetune_s=finetune_s), source=structure and structure.columns())
    ckpt.unlink(missing_ok=True)
    log(f"top-1 after {cfg.finetune_epochs} fine-tuning epochs: {top1:.2f}%; outputs in {out}")
    return report


def _cut(cfg: PruneConfig, budget: float, graph: ChannelGraph, transforms: Transforms | None, loaded: Loaded,
         log: Log, ratios: Any = None, structure: Any = None) -> Any:
    from lcp.cut.pruner import cut_removed, prune_graph

    if structure is not None:  # --structure-from: the units are given
        result = cut_removed(graph, structure.removed, budget=budget, budget_type=cfg.budget_type, method=cfg.method)
        log(f"pruned {loaded.name} with the structure from {structure.path}: {result.plan.describe()}; "
            f"verified {result.verification}")
        return result

    batches = None
    if cfg.importance == "taylor":
        batches = loaded.bundle.loader("train", 64, shuffle=True, seed=cfg.seed, limit=1024)
    result = prune_graph(graph, budget=budget, budget_type=cfg.budget_type, method=cfg.method,
                         importance=cfg.importance, aggregate=cfg.aggregate, transforms=transforms,
                         round_to=cfg.round_to, min_ratio=cfg.min_ratio, seed=cfg.seed, batches=batches,
                         latency=cfg.latency_options(), ratios=ratios)
    if ratios is not None:
        result.info["agent_ratios"] = ratios
    p = result.plan
    base = p.macs_base if cfg.budget_type == "macs" else p.params_base
    if cfg.budget_type == "latency":
        info = result.info
        log(f"budget {budget:g} keeps {budget:.0%} of the baseline latency at batch {cfg.latency_batch} on "
            f"{cfg.device} ({info['latency_base_ms']:.2f} ms -> {info['latency_pruned_ms']:.2f} ms measured)")
    else:
        log(f"budget {budget:g} keeps {budget:.0%} of the baseline {cfg.budget_type} "
            f"({base / 1e6:.2f}M -> at most {budget * base / 1e6:.2f}M)")
    log(f"pruned {loaded.name} with method {cfg.method}: {p.describe()}; verified {result.verification}")
    return result


def _latency_columns(cfg: PruneConfig, loaded: Loaded, pruned: nn.Module, info: dict) -> dict[str, float]:
    """Measured latency of the original and the pruned network (batch ``--latency-batch``) and the speedup."""
    from lcp.cut.latency import paired_latency

    if "latency_base_ms" in info:
        base, new, ratio = info["latency_base_ms"], info["latency_pruned_ms"], info["latency_ratio"]
    else:
        t = paired_latency(pruned, loaded.model, loaded.input_size, batch=cfg.latency_batch, device=cfg.device,
                           n_threads=cfg.threads)
        base, new, ratio = t["reference_ms"], t["median_ms"], t["ratio"]
    return {"latency_base_ms": base, "latency_pruned_ms": new, "speedup": 1 / ratio}


def write_outputs(cfg: PruneConfig, budget: float, loaded: Loaded, result: Any, pruned: nn.Module, out: Path,
                  numbers: dict[str, float], source: dict[str, str] | None = None) -> Any:
    """Weights, channels.json, transforms.json, report.csv, layers.csv and widths.png (all atomic); ``source``:
    where a given structure came from (report columns and channels.json keys)."""
    from lcp.cut.pruner import group_widths

    p, graph = result.plan, result.graph
    spec = store.channels_spec(graph, p.removed, pruned, model_name=loaded.name,
                               num_classes=loaded.bundle.num_classes, input_size=loaded.input_size,
                               extra={"budget": budget, "budget_type": cfg.budget_type, "method": cfg.method,
                                      "macs": p.macs, "params": p.params, "dataset": loaded.dataset,
                                      "data": loaded.data_spec, **(source or {})})
    store.write(out, pruned, spec)
    atomic_write_json(out / "transforms.json", result.transforms.to_json())
    row = {"model": loaded.name, "dataset": loaded.dataset, "method": cfg.method, "importance": cfg.importance,
           "budget_type": cfg.budget_type, "budget": budget, "macs_base": p.macs_base, "macs_pruned": p.macs,
           "macs_ratio": p.macs_ratio, "params_base": p.params_base, "params_pruned": p.params,
           "params_ratio": p.params_ratio, "finetune_epochs": cfg.finetune_epochs, "seed": cfg.seed, **numbers}
    row.update(_latency_columns(cfg, loaded, pruned, result.info))
    row.update(source or {})
    report = write_report(row, out / "report.csv")
    rows = group_widths(graph, p.removed)
    for r, g in zip(rows, graph.groups):
        r["alpha"] = float(result.transforms.alpha[g.index])
        r["kappa"] = float(result.transforms.kappa[g.index])
        if "agent_ratios" in result.info:  # the learned ratio (before scaling to this budget)
            r["agent_ratio"] = float(result.info["agent_ratios"][g.index])
    write_layers_csv(rows, out / "layers.csv")
    before = store.widths(loaded.model)
    after = store.widths(pruned)
    layers = [(n, w[0], after[n][0]) for n, w in before.items() if n in after and len(w) >= 2]
    plot_widths(layers, out / "widths.png", title=f"{loaded.name}: output channels before and after pruning")
    return report


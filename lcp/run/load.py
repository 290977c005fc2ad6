"""Load what a run needs: the model by name, its weights (or a baseline trained first), the data; the
unpruned model's test accuracy (cached)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lcp.errors import LcpError
from lcp.io import atomic_write_json, cache_dir, save_tensors
from lcp.models.factory import (
    create_model,
    default_checkpoint,
    load_checkpoint,
    model_info,
    read_state_dict,
    strip_prefix,
)
from lcp.run.config import PruneConfig, file_digest
from lcp.training.data import load_data
from lcp.training.train import evaluate, train_baseline

Log = Callable[[str], None]


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
    num_classes: int | None = None  # the model's classes (an unlabeled folder has none of its own)
    extra: dict = field(default_factory=dict)


def load_model_and_data(cfg: PruneConfig, log: Log = print) -> Loaded:
    """Resolve the model name, load the data and the model's weights (training a baseline if none exist)."""
    info = model_info(cfg.model)
    spec = cfg.data or info.default_dataset
    if spec is None:
        raise LcpError(f"{cfg.model} has no default data set: pass --data PATH (an ImageFolder root)")
    dataset = "cifar10" if str(spec).lower() == "cifar10" else Path(spec).name
    size = tuple(int(v) for v in cfg.input_size) if cfg.input_size else tuple(info.input_size)
    transform = eval_transform(info, size)
    # lfgcl and a --label-free lcp search never read labels: a folder of images without class folders (or
    # train/) is loaded unlabeled
    label_free = cfg.method == "lfgcl" or (cfg.method == "lcp" and cfg.label_free)
    flat = label_free and dataset != "cifar10" and not (Path(spec).expanduser() / "train").is_dir()
    bundle = load_data(
        spec,
        input_size=size,
        mean=info.mean,
        std=info.std,
        holdout=cfg.holdout,
        seed=0,
        transform=transform,
        labeled=not flat,
    )
    if flat and not cfg.checkpoint:
        raise LcpError(f"{spec} has no class folders: pass --checkpoint (the trained model to prune)")
    pretrained = cfg.pretrained and not cfg.checkpoint
    classes = _checkpoint_classes(cfg.model, cfg.checkpoint) if flat else bundle.num_classes
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)  # a baseline trained from here starts from the seed's weights
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
    return Loaded(model, info.name, dataset, bundle, size, weights, info, data_spec, num_classes=classes)


def _checkpoint_classes(name: str, checkpoint: str) -> int | None:
    """Classifier size stored in ``checkpoint`` (its last Linear's rows), for data without classes."""
    linears = [n for n, m in create_model(name).named_modules() if isinstance(m, nn.Linear)]
    state = {strip_prefix(k): v for k, v in read_state_dict(Path(checkpoint)).items()}
    weight = state.get(f"{linears[-1]}.weight") if linears else None
    return int(weight.shape[0]) if weight is not None else None


def eval_transform(info: Any, size: tuple[int, ...]) -> Any:
    """How images are brought to ``size``: timm's eval transform for timm models above 64 px, else None (resize
    and center crop, ``lcp.training.data``)."""
    return timm_eval_transform(info, size) if info.source == "timm" and min(size[1:]) > 64 else None


def timm_eval_transform(info: Any, size: tuple[int, ...]) -> Any:
    """timm's eval transform from the model's pretrained_cfg (interpolation, crop_pct, mean, std) at ``size``."""
    import timm.data  # lazily: timm adds seconds to every start and zoo models do not need it

    return timm.data.create_transform(
        input_size=size,
        interpolation=info.interpolation,
        mean=info.mean,
        std=info.std,
        crop_pct=info.crop_pct,
        is_training=False,
    )


def _train_baseline(model: nn.Module, name: str, dataset: str, bundle: Any, cfg: PruneConfig, log: Log) -> Path:
    """Train a baseline when no weights exist, cache it in the user cache, and say so."""
    # the data's path, size and classes and the training settings name it: another folder of the same name, or
    # other epochs, train their own baseline (and never resume another's interrupted training)
    what = f"{bundle.source}|{tuple(bundle.input_size)}|{bundle.num_classes}|{cfg.baseline_epochs}|{cfg.seed}"
    if cfg.holdout != type(cfg).__dataclass_fields__["holdout"].default:  # the images it trains on: one trained
        what += f"|holdout {cfg.holdout}"  # on another run's held-out split must not serve that run's search
    path = cache_dir() / "weights" / f"{name}_{dataset}-{hashlib.sha256(what.encode()).hexdigest()[:8]}.safetensors"
    if path.is_file():
        load_checkpoint(model, path, name=name)
        return path
    log(
        f"no weights for {name} on {dataset} (no --checkpoint, nothing in $LCP_WEIGHTS or {path.parent}): "
        f"training a baseline for {cfg.baseline_epochs} epochs first"
    )
    ckpt = path.with_suffix(".training")
    train_baseline(
        model,
        bundle,
        epochs=cfg.baseline_epochs,
        ckpt_path=ckpt,
        resume=ckpt.exists(),
        seed=cfg.seed,
        progress=cfg.progress,
        device=cfg.device,
        num_threads=cfg.threads,
        channels_last=None if cfg.channels_last else False,
    )
    model.cpu()
    save_tensors(model.state_dict(), path)
    ckpt.unlink(missing_ok=True)
    log(f"baseline saved to {path}")
    return path


def baseline_accuracy(loaded: Loaded, batch_size: int = 256, device: str = "cpu") -> float:
    """Test top-1 of the unpruned model, cached per weights file and data set (NaN without a test split)."""
    if len(loaded.bundle.test_x) == 0:
        return float("nan")

    weights = file_digest(loaded.weights) if Path(loaded.weights).is_file() else loaded.weights  # or pretrained:
    data = f"{loaded.bundle.source}|{tuple(loaded.input_size)}"  # the same images at another size differ
    key = f"{loaded.name}-{weights}-{hashlib.sha256(data.encode()).hexdigest()[:8]}"
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

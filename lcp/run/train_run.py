"""``lcp train``: a baseline trained from scratch, checkpointed per epoch, resumable."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from lcp.errors import LcpError
from lcp.io import atomic_path, save_tensors
from lcp.models.factory import create_model, model_info
from lcp.run.config import TrainConfig, require_device
from lcp.run.folder import RunLock, claim, prepare_out_dir
from lcp.training.data import load_data
from lcp.training.train import evaluate, train_baseline

Log = Callable[[str], None]


def run_train(cfg: TrainConfig, log: Log = print) -> pd.DataFrame:
    """``lcp train``: train ``cfg.model`` from scratch on the train split (held-out images excluded), with a
    checkpoint per epoch (``--resume``); writes ``model.safetensors`` and ``report.csv`` (test top-1) to ``out``."""
    cfg = TrainConfig.from_mapping(vars(cfg), "lcp train")  # every value checked once more (API callers)
    require_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = model_info(cfg.model)
    spec = cfg.data or info.default_dataset
    if spec is None:
        raise LcpError(f"{cfg.model} has no default data set: pass --data PATH (an ImageFolder root)")
    dataset = "cifar10" if str(spec).lower() == "cifar10" else Path(spec).name
    size = tuple(int(v) for v in cfg.input_size) if cfg.input_size else tuple(info.input_size)
    out = Path(cfg.out)
    with claim(out, RunLock(out)):
        prepare_out_dir(out, cfg.signature(), resume=cfg.resume, overwrite=cfg.overwrite)
        ckpt = out / "training.safetensors"
        finished = [out / n for n in ("model.safetensors", "report.csv")]
        if cfg.resume and not ckpt.exists() and all(f.is_file() for f in finished):  # its checkpoint is deleted
            log(f"finished in an earlier attempt; outputs in {out}")
            return pd.read_csv(out / "report.csv")
        bundle = load_data(spec, input_size=size, mean=info.mean, std=info.std, holdout=cfg.holdout, seed=0)
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, num_classes=bundle.num_classes)
        log(
            f"training {info.name} on {dataset} from scratch: {cfg.epochs} epochs, lr {cfg.lr:g} ({cfg.schedule}), "
            f"batch {cfg.batch_size}, {len(bundle.train_y)} training images, on {cfg.device}"
        )
        t0 = time.perf_counter()
        hist = train_baseline(
            model,
            bundle,
            epochs=cfg.epochs,
            lr=cfg.lr,
            schedule=cfg.schedule,
            batch_size=cfg.batch_size,
            weight_decay=cfg.weight_decay,
            ckpt_path=ckpt,
            resume=cfg.resume and ckpt.exists(),
            seed=cfg.seed,
            progress=cfg.progress,
            device=cfg.device,
            eval_loader=bundle.loader("holdout", 256) if cfg.holdout else None,
        )
        train_s = time.perf_counter() - t0
        test = evaluate(model, bundle.loader("test", 256), device=cfg.device)
        model.cpu()
        save_tensors(model.state_dict(), out / "model.safetensors")
        rows = [{k: v for k, v in r.items()} for r in hist["history"]]
        with atomic_path(out / "history.csv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        row = {
            "model": info.name,
            "dataset": dataset,
            "epochs": cfg.epochs,
            "lr": cfg.lr,
            "schedule": cfg.schedule,
            "batch_size": cfg.batch_size,
            "train_images": len(bundle.train_y),
            "top1": round(test["top1"], 2),
            "loss": round(test["loss"], 4),
            "train_s": round(train_s, 1),
            "resumed_from_epoch": hist.get("resumed_from") or 0,
            "device": cfg.device,
            "seed": cfg.seed,
        }
        report = pd.DataFrame([row])
        with atomic_path(out / "report.csv") as tmp:
            report.to_csv(tmp, index=False)
        ckpt.unlink(missing_ok=True)
        log(
            f"{info.name}: test top-1 {test['top1']:.2f}% after {cfg.epochs} epochs ({train_s:.0f} s); weights in "
            f"{out / 'model.safetensors'} (use with --checkpoint)"
        )
        return report

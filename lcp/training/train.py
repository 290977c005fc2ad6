"""Fine-tuning (with optional distillation) and baseline training, resumable from a checkpoint per epoch.

``evaluate`` and ``recalibrate_bn`` (``lcp.training.evaluate``) and the checkpoint format
(``lcp.training.checkpoint``) are re-exported here.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcp.errors import LcpError
from lcp.training.checkpoint import load_checkpoint, save_checkpoint
from lcp.training.data import DataBundle
from lcp.training.distributed import distributed
from lcp.training.evaluate import (
    Batch,
    LoaderFactory,
    evaluate,
    inputs_and_labels,
    modes_kept,
    recalibrate_bn,
    torch_threads,
)
from lcp.training.layout import TrainingLayout

__all__ = ["evaluate", "recalibrate_bn", "finetune", "train_baseline", "load_checkpoint", "save_checkpoint"]


class EpochCallback(Protocol):
    """Called after each epoch (and its checkpoint) with the 1-based epoch and its history record."""

    def __call__(self, epoch: int, record: dict[str, Any]) -> None: ...


class LossFn(Protocol):
    """The caller's training loss: ``loss_fn(model, batch)`` -> a scalar tensor (``finetune(loss_fn=...)``)."""

    def __call__(self, model: nn.Module, batch: Any) -> Tensor: ...


# ---------------------------------------------------------------------------------------------- training


def _lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """Learning rate before update ``step`` (0-based) of ``total``: cosine to 0, or one-cycle (30% warm-up)."""
    t = step / max(1, total)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "onecycle":
        warm, start = 0.3, base / 25.0
        if t < warm:
            return start + (base - start) * 0.5 * (1.0 - math.cos(math.pi * t / warm))
        return base * 0.5 * (1.0 + math.cos(math.pi * (t - warm) / (1.0 - warm)))
    raise LcpError(f"unknown learning-rate schedule {schedule!r}: use cosine or onecycle")


def _kd_loss(student: Tensor, teacher: Tensor, T: float) -> Tensor:
    """Hinton distillation: T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean."""
    log_s, log_t = F.log_softmax(student / T, 1), F.log_softmax(teacher / T, 1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (T * T)


def distillation_loss(
    model: nn.Module,
    teacher: nn.Module | None,
    x: Tensor,
    y: Tensor | None,
    dev: torch.device,
    kd_alpha: float,
    kd_T: float,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(loss, logits, labels on ``dev`` or None if unlabeled): CE, or CE mixed with KD, or KD alone."""
    out = model(x)
    y = y.to(dev, non_blocking=True) if y is not None and bool((y >= 0).all()) else None
    if y is None and teacher is None:
        raise LcpError("training needs labels or a teacher: use labeled data or pass a teacher for distillation")
    ce = F.cross_entropy(out, y) if y is not None else None
    if teacher is None:
        return ce, out, y  # type: ignore[return-value]
    with torch.no_grad():
        t_out = teacher(x)
    kd = _kd_loss(out, t_out, kd_T)
    return (kd if ce is None else (1.0 - kd_alpha) * ce + kd_alpha * kd), out, y


def _factory(data: DataBundle | LoaderFactory, batch_size: int, seed: int, augment: bool) -> LoaderFactory:
    if isinstance(data, DataBundle):
        drop = len(data.train_x) >= batch_size  # avoids a last batch of 1, which BatchNorm rejects in train mode
        return lambda epoch: data.loader(
            "train", batch_size, shuffle=True, augment=augment, seed=seed, epoch=epoch, drop_last=drop
        )
    if callable(data):
        return data
    raise LcpError("training data must be a DataBundle or a function epoch -> batches")


def _run(
    model: nn.Module,
    data: DataBundle | LoaderFactory,
    *,
    epochs: int,
    lr: float,
    schedule: str,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    batch_size: int,
    augment: bool,
    teacher: nn.Module | None,
    kd_alpha: float,
    kd_T: float,
    ckpt_path: Path | None,
    resume: bool,
    seed: int,
    progress: bool,
    device: str | torch.device,
    on_epoch_end: EpochCallback | None,
    eval_loader: Iterable[Batch] | None,
    num_threads: int | None,
    desc: str,
    loss_fn: LossFn | None = None,
    on_step_end: Callable[[nn.Module], None] | None = None,
    channels_last: bool | None = None,
) -> dict[str, Any]:
    """The shared SGD loop of :func:`finetune` and :func:`train_baseline`."""
    from tqdm.auto import tqdm

    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise LcpError(f"epochs and batch size must be at least 1 and lr positive (got {epochs}, {batch_size}, {lr})")
    if teacher is not None and not 0.0 <= kd_alpha <= 1.0:
        raise LcpError(f"kd_alpha must be between 0 and 1 (got {kd_alpha})")
    world, rank = distributed(device)
    dev = torch.device(device)
    make = _factory(data, batch_size, seed, augment)
    try:
        steps = len(make(0))  # type: ignore[arg-type]
    except TypeError:
        raise LcpError("the training loader must have a length (len()) to plan the learning-rate schedule") from None
    if steps == 0:
        raise LcpError(f"no training batches: the train split has fewer images than the batch size {batch_size}")
    total = epochs * steps
    ckpt = Path(ckpt_path) if ckpt_path is not None else None
    settings = {
        "epochs": epochs,
        "lr": lr,
        "schedule": schedule,
        "batch_size": batch_size,
        "seed": seed,
        "steps_per_epoch": steps,
        "momentum": momentum,
        "nesterov": nesterov,
        "weight_decay": weight_decay,
        "teacher": teacher is not None,
        "kd_alpha": kd_alpha if teacher is not None else None,
        "kd_T": kd_T if teacher is not None else None,
        "augment": augment,
    }
    model.to(dev)
    if teacher is not None:
        teacher.to(dev).eval()
    # under torchrun every rank sees the same batch order and takes every world-th batch; DDP averages grads
    ids = [torch.cuda.current_device() if dev.index is None else dev.index] if dev.type == "cuda" else None
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids) if world > 1 else model
    usable = steps - steps % world
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay
    )
    fast_layout = (dev.type == "cpu" if channels_last is None else channels_last) and world == 1
    layout = TrainingLayout(model, teacher, opt, wanted=fast_layout)
    history: list[dict[str, Any]] = []
    start_epoch, resumed_from, before = 0, None, 0.0  # before: training seconds of a resumed checkpoint's epochs
    t0 = time.perf_counter()
    rng_devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch_threads(num_threads), torch.random.fork_rng(devices=rng_devices), modes_kept(model):
        torch.manual_seed(seed)
        if resume and ckpt is not None and ckpt.exists():
            info = load_checkpoint(ckpt, model, opt, restore_rng=True)
            made = info["settings"]  # a setting recorded only by later versions is not compared
            diff = {k: (made[k], v) for k, v in settings.items() if k in made and made[k] != v}
            if diff:
                said = ", ".join(f"{k}={a} (now {b})" for k, (a, b) in diff.items())
                raise LcpError(
                    f"checkpoint {ckpt} was made with {said}: use the same settings or start without --resume"
                )
            start_epoch = resumed_from = int(info["epoch"])
            history = list(info["history"])
            before = float(history[-1].get("seconds", 0.0)) if history else 0.0
            layout.wanted = info.get("layout") == "channels_last"  # checkpoints before 2026-12-07: NCHW
        kept = f"the last good checkpoint is kept at {ckpt}"
        last_good = "no checkpoint was written yet" if start_epoch == 0 else kept
        bar = tqdm(
            total=total, initial=start_epoch * steps, disable=not progress or rank != 0, dynamic_ncols=True, unit="step"
        )
        with bar, layout:
            for epoch in range(start_epoch, epochs):
                loader = make(epoch)
                model.train()
                loss_sum, correct, seen, labeled = 0.0, 0, 0, 0
                bar.set_description(f"{desc} epoch {epoch + 1}/{epochs}")
                for i, batch in enumerate(loader):
                    if world > 1 and (i >= usable or i % world != rank):
                        bar.update()
                        continue
                    step = epoch * steps + i - i % world  # every rank at the same step's learning rate
                    for g in opt.param_groups:
                        g["lr"] = _lr_at(step, total, lr, schedule)
                    if loss_fn is not None:  # the caller's loss of the whole batch (detection targets, ...)
                        loss, out, y, n = loss_fn(net, batch), None, None, 1  # its mean loss is per batch
                        if not (isinstance(loss, Tensor) and loss.dim() == 0):
                            raise LcpError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
                    else:
                        x, y = inputs_and_labels(batch)
                        x = layout.inputs(x.to(dev, non_blocking=True))
                        loss, out, y = distillation_loss(net, teacher, x, y, dev, kd_alpha, kd_T)
                        n = len(x)
                    if not bool(torch.isfinite(loss)):
                        where = last_good if ckpt is not None else "no checkpoint is kept (no checkpoint path)"
                        raise LcpError(f"loss became NaN at epoch {epoch + 1} step {i + 1}; {where}; lower --lr")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if on_step_end is not None:
                        on_step_end(model)
                    loss_sum += float(loss.detach()) * n
                    seen += n
                    if y is not None and out is not None:
                        correct += int((out.detach().argmax(1) == y).sum())
                        labeled += n
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{opt.param_groups[0]['lr']:.3g}", refresh=False)
                    bar.update()
                record: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "loss": loss_sum / max(1, seen),
                    "top1": 100.0 * correct / labeled if labeled else None,
                    "lr": opt.param_groups[0]["lr"],
                    "seconds": before + time.perf_counter() - t0,  # since the run began, across resumes
                }
                if eval_loader is not None:
                    ev = evaluate(model, eval_loader, device=dev)
                    record.update(val_top1=ev["top1"], val_loss=ev["loss"])
                history.append(record)
                if progress:
                    val = f", eval top1 {record['val_top1']:.2f}%" if "val_top1" in record else ""
                    top1 = f", train top1 {record['top1']:.2f}%" if record["top1"] is not None else ""
                    line = f"{desc} epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f}{top1}{val}"
                    bar.write(line, file=sys.stderr)
                if ckpt is not None and rank == 0:
                    info = {
                        "epoch": epoch + 1,
                        "step": (epoch + 1) * steps,
                        "total_steps": total,
                        "settings": settings,
                        "history": history,
                        "layout": "channels_last" if layout.used else "nchw",
                    }
                    save_checkpoint(ckpt, model, opt, info)
                    last_good = kept
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, record)
    return {
        "history": history,
        "epochs": epochs,
        "steps": total,
        "resumed_from": resumed_from,
        "channels_last": layout.used,
        "seconds": time.perf_counter() - t0,
        "checkpoint": str(ckpt) if ckpt is not None else None,
    }


def finetune(
    model: nn.Module,
    data: DataBundle | LoaderFactory,
    *,
    epochs: int,
    lr: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    augment: bool = True,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.9,
    kd_T: float = 4.0,
    ckpt_path: Path | str | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
    on_epoch_end: EpochCallback | None = None,
    eval_loader: Iterable[Batch] | None = None,
    num_threads: int | None = None,
    loss_fn: LossFn | None = None,
    on_step_end: Callable[[nn.Module], None] | None = None,
    channels_last: bool | None = None,
) -> dict[str, Any]:
    """Fine-tune with SGD (Nesterov) and a per-step cosine schedule to 0; optional distillation.

    ``data`` is a :class:`DataBundle` (its train split, shuffled and augmented per epoch from ``seed``) or a
    function ``epoch -> batches`` whose result has ``len()``. With a ``teacher`` the loss is
    ``(1 - kd_alpha) * CE + kd_alpha * T^2 * KL`` (pure KD on unlabeled batches). ``loss_fn(model, batch)``
    replaces that loss by the caller's, for models that are not classifiers: it gets each batch as the loader
    yields it (moving it to ``device`` is its job) and returns a scalar tensor, e.g. a torchvision detector's
    ``sum(model(images, targets).values())``. A checkpoint is written
    atomically to ``ckpt_path`` after every epoch; ``resume=True`` continues from it and ends with the same
    weights as an uninterrupted run. ``on_step_end(model)`` is called after every optimizer step (e.g. to keep a
    moving average of the weights; what it keeps is the caller's, not in the checkpoint). ``channels_last``
    (None: on the CPU; not with ``loss_fn``) trains in the channels-last memory layout where the model and the
    teacher allow it (:class:`lcp.training.layout.TrainingLayout`; docs/training.md: up to 1.7x faster on CPUs,
    slower for some pruned networks); a resumed run keeps its checkpoint's layout; the model is returned in the
    default layout. Returns ``{"history": [per-epoch records], "channels_last": bool, ...}``; a record's
    ``seconds`` count from the start of the run, across resumes, and the result's from the start of this call.
    """
    return _run(
        model,
        data,
        epochs=epochs,
        lr=lr,
        schedule="cosine",
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        batch_size=batch_size,
        augment=augment,
        teacher=teacher,
        kd_alpha=kd_alpha,
        kd_T=kd_T,
        ckpt_path=ckpt_path,
        resume=resume,
        seed=seed,
        progress=progress,
        device=device,
        on_epoch_end=on_epoch_end,
        eval_loader=eval_loader,
        num_threads=num_threads,
        desc="finetune",
        loss_fn=loss_fn,
        on_step_end=on_step_end,
        channels_last=channels_last,
    )


def train_baseline(
    model: nn.Module,
    data: DataBundle | LoaderFactory,
    *,
    epochs: int,
    lr: float = 0.1,
    schedule: str = "onecycle",
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    augment: bool = True,
    ckpt_path: Path | str | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
    on_epoch_end: EpochCallback | None = None,
    eval_loader: Iterable[Batch] | None = None,
    num_threads: int | None = None,
    channels_last: bool | None = None,
) -> dict[str, Any]:
    """Train from scratch: the :func:`finetune` loop with ``schedule`` "onecycle" (30% warm-up from lr/25,
    then cosine to 0) or "cosine", and no teacher."""
    return _run(
        model,
        data,
        epochs=epochs,
        lr=lr,
        schedule=schedule,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        batch_size=batch_size,
        augment=augment,
        teacher=None,
        kd_alpha=0.0,
        kd_T=1.0,
        ckpt_path=ckpt_path,
        resume=resume,
        seed=seed,
        progress=progress,
        device=device,
        on_epoch_end=on_epoch_end,
        eval_loader=eval_loader,
        num_threads=num_threads,
        desc="train",
        channels_last=channels_last,
    )

"""Evaluation and BatchNorm recalibration of a model on batches, on any device, leaving its modes as found."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcp.engine.modes import modes_kept
from lcp.errors import LcpError

Batch = tuple[Tensor, Tensor]
LoaderFactory = Callable[[int], Iterable[Batch]]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch.set_num_threads(n) for the block, only when asked."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(before)


def device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def inputs_and_labels(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    return batch[0], (batch[1] if len(batch) > 1 else None)


def fold_bn(model: nn.Module) -> nn.Module:
    """``model`` (eval mode) with every BatchNorm that follows a conv folded into it, in place: the same outputs
    up to rounding (a third less time per held-out batch of the search's fitness). A model torch.fx cannot trace
    is returned as it is."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model, inplace=True)
    except Exception:  # untraceable or unusual model: unfused, same numbers
        return model


def prefers_channels_last(device: torch.device, model: nn.Module, batches: Iterable[Tensor]) -> bool:
    """Whether inference on ``batches`` should run channels-last: on the CPU, for 4-d images and no 3-d convs,
    where a channels-last copy of ``model`` gives the same outputs on 4 images of the first batch (eval mode; a
    network whose code does not accept channels-last feature maps, e.g. a ``view`` of one, does not).

    Depthwise and small convs run up to twice as fast on channels-last CPU kernels; on CUDA the search's
    candidates ran 2x (ResNet-56) to 20-60x (MobileNetV2) slower that way (H200, cuDNN 9.19), so not there."""
    batches = list(batches)
    if (
        device.type != "cpu"
        or not batches
        or not all(x.dim() == 4 for x in batches)
        or any(p.dim() == 5 for p in model.parameters())
    ):
        return False
    probe = batches[0][:4].cpu()
    try:
        with modes_kept(model), torch.no_grad():
            model.eval()
            ref = model(probe)
            fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
            out = fast(probe.contiguous(memory_format=torch.channels_last))
            return isinstance(ref, Tensor) and same_logits(out, ref)
    except Exception:  # code that does not accept channels-last feature maps
        return False


def same_logits(out: Any, ref: Tensor) -> bool:
    """Whether ``out`` is a tensor equal to ``ref`` up to float32 rounding of a reordered computation (another
    memory layout, BatchNorm folded): the check before a faster copy of a network replaces it."""
    return isinstance(out, Tensor) and out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-3, atol=1e-4)


@torch.no_grad()
def inference_model(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` for fast inference: BatchNorm folded into the conv before it (where
    torch.fx can trace the model) and channels_last weights. ``model`` itself is not touched."""
    return fold_bn(copy.deepcopy(model).eval()).to(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Batch], *, device: str | torch.device = "cpu") -> dict[str, float]:
    """Top-1 accuracy (%), mean cross-entropy and sample count over ``loader``, in eval mode, no grad.

    Runs on :func:`inference_model` (1.3-1.5x faster on CPU); the first batch is also run through ``model``
    itself and the fast copy is dropped if their logits differ beyond float32 rounding."""
    dev = torch.device(device)
    model.to(dev)
    fast: nn.Module | None = None
    correct, loss_sum, n = 0, 0.0, 0
    with modes_kept(model):
        model.eval()
        for batch in loader:
            x, y = inputs_and_labels(batch)
            if y is None or bool((y < 0).any()):
                raise LcpError("cannot measure accuracy on unlabeled images: evaluate on a labeled split")
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if fast is None:
                out = model(x)
                fast = inference_model(model) if x.dim() == 4 else model
                if fast is not model and not same_logits(fast(x.contiguous(memory_format=torch.channels_last)), out):
                    fast = model
            else:
                out = fast(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
    if n == 0:
        raise LcpError("no images to evaluate: the data split is empty")
    return {"top1": 100.0 * correct / n, "loss": loss_sum / n, "n": n}


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, loader: Iterable[Any], *, batches: int = 50, device: str | torch.device | None = None
) -> nn.Module:
    """Re-estimate BatchNorm running stats from ``batches`` batches (cumulative average; labels unused).

    Only the BatchNorm layers run in train mode; everything else (dropout, ...) stays in eval mode.
    Momentum and train/eval flags are restored afterwards, and so are the old statistics when the loader
    yields no batch (an error). A batch smaller than the first (a short last batch, perhaps of one image, which
    BatchNorm1d refuses) is skipped: the cumulative average would weigh it as much as a full one.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return model
    if batches < 1:
        raise LcpError(f"batches must be at least 1 to recalibrate BatchNorm (got {batches})")
    dev = device_of(model, device)
    momenta = [bn.momentum for bn in bns]
    saved = [
        {k: v.clone() for k, v in bn.state_dict().items() if k.startswith(("running_", "num_batches"))} for bn in bns
    ]
    seen, first = 0, 0
    with modes_kept(model):
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        try:
            for batch in loader:
                if seen >= batches:
                    break
                x = inputs_and_labels(batch)[0]
                if len(x) < first:
                    continue
                first = first or len(x)
                model(x.to(dev, non_blocking=True))
                seen += 1
        finally:
            for bn, m, old in zip(bns, momenta, saved):
                bn.momentum = m
                if seen == 0:
                    bn.load_state_dict(old, strict=False)
    if seen == 0:
        raise LcpError("no batches to recalibrate BatchNorm with: the data split is empty")
    return model

"""Channels-last training on the CPU: the same SGD steps in a faster memory layout.

PyTorch's CPU convolutions (oneDNN) run forward and backward faster on channels-last tensors than on the default
NCHW layout: a training step of the CIFAR networks took 1.2-1.7x less time, except on a ResNet-56 cut to 8-48
channels per layer (0.88x, 1.04x distilled), whose channels-last BatchNorm is slow, and on a DenseNet whose
connections were cut (0.82x, 1.12x distilled) (``benchmarks/train_speed.py``; docs/training.md). The layout changes
the order of floating-point sums, not the arithmetic, so a run differs from an NCHW run only by rounding; the same
seed still gives the same weights run after run.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lcp.engine.modes import modes_kept

_CL = torch.channels_last


def _has_conv_weights(model: nn.Module) -> bool:
    return any(p.dim() == 4 for p in model.parameters())


def _is_channels_last(model: nn.Module) -> bool:
    return any(
        p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=_CL) for p in model.parameters()
    )


class TrainingLayout:
    """The memory layout of one training run, decided on its first batch.

    Channels-last is used when it is wanted, the batch is a 4-d image tensor, the model has conv weights in the
    default layout (a model the caller made channels-last already is left as it is), and the model's outputs on
    a few images of that batch are the same in both layouts (eval mode, no gradients: a model whose code reshapes
    feature maps with ``view`` or mishandles strides keeps the default layout). The model, the teacher and the
    optimizer's state are converted in place (parameters keep their identity); leaving the ``with`` block
    converts the model and the teacher back.
    """

    def __init__(self, model: nn.Module, teacher: nn.Module | None, optimizer: torch.optim.Optimizer, wanted: bool):
        self.model, self.optimizer = model, optimizer
        # a teacher the caller made channels-last already (or the model itself) is not converted
        plain = teacher is not None and teacher is not model and not _is_channels_last(teacher)
        self.teacher = teacher if plain else None
        self.wanted = wanted
        self.decided = False
        self.channels_last = False

    def inputs(self, x: Tensor) -> Tensor:
        """``x`` in the run's layout (the layout is decided on the first call)."""
        if not self.decided:
            self.decided = True
            self.channels_last = self._try(x)
        return x.contiguous(memory_format=_CL) if self.channels_last and x.dim() == 4 else x

    @torch.no_grad()
    def _try(self, x: Tensor) -> bool:
        m = self.model
        if not self.wanted or x.dim() != 4 or not _has_conv_weights(m) or _is_channels_last(m):
            return False
        probe = x[:4]
        with modes_kept(m):
            m.eval()
            try:
                ref = m(probe)
                self._convert(_CL)
                ok = isinstance(ref, Tensor) and torch.allclose(
                    m(probe.contiguous(memory_format=_CL)), ref, rtol=1e-3, atol=1e-4
                )
            except Exception:  # a model whose code does not accept channels-last feature maps
                ok = False
        if not ok:
            self._convert(torch.contiguous_format)
            return False
        for p in m.parameters():  # a resumed optimizer's buffers come in the default layout
            for k, v in self.optimizer.state.get(p, {}).items():
                if isinstance(v, Tensor) and v.shape == p.shape and v.dim() == 4:
                    self.optimizer.state[p][k] = v.contiguous(memory_format=_CL)
        return True

    def _convert(self, fmt: torch.memory_format) -> None:
        self.model.to(memory_format=fmt)
        if self.teacher is not None:
            self.teacher.to(memory_format=fmt)

    def __enter__(self) -> TrainingLayout:
        return self

    def __exit__(self, *exc: object) -> None:
        """The model and the teacher back in the default layout, if this run changed it."""
        if self.channels_last:
            self._convert(torch.contiguous_format)
            self.channels_last = False

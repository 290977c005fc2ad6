"""Channels-last training on the CPU: the same SGD steps in another memory layout, usually faster.

PyTorch's CPU convolutions (oneDNN) run forward and backward faster on channels-last tensors than on the default
NCHW layout: a training step of the unpruned CIFAR networks and of the MobileNetV2 and DenseNet-40 channel cuts
took 1.19-1.70x less time; cuts of ResNets with few channels per layer (channels-last BatchNorm is slow on few
channels) and connection-cut DenseNets (channel gathers) took 0.82-1.12x (``benchmarks/train_speed.py``;
docs/training.md). The layout changes the order of floating-point sums, not the arithmetic, so a run differs from
an NCHW run only by rounding; the same seed gives the same weights run after run, and a resumed run continues in
the layout its checkpoint was made in.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lcp.engine.modes import modes_kept
from lcp.training.evaluate import same_logits

_CL = torch.channels_last


def _has_conv_weights(model: nn.Module) -> bool:
    return any(p.dim() == 4 for p in model.parameters())


def _is_channels_last(model: nn.Module) -> bool:
    return any(
        p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=_CL) for p in model.parameters()
    )


class TrainingLayout:
    """The memory layout of one training run, decided on its first batch; a context manager.

    Channels-last is used when it is wanted, the batch is a 4-d image tensor, the model has conv weights in the
    default layout (a model the caller made channels-last already is left as it is), ``Module.to`` keeps the
    parameters' identity (the optimizer holds them), and the outputs of the model and of the teacher on 4 images
    of that batch are the same in both layouts (eval mode, no gradients: a network whose code reshapes feature
    maps with ``view`` or mishandles strides keeps the default layout; forward hooks see these 4-image passes).
    Code that runs only in train mode is not probed. The model, the teacher and the optimizer's state are
    converted in place; leaving the ``with`` block converts the model and the teacher back, also after an error.
    """

    def __init__(self, model: nn.Module, teacher: nn.Module | None, optimizer: torch.optim.Optimizer, wanted: bool):
        self.model, self.optimizer = model, optimizer
        # a teacher the caller made channels-last already (or the model itself) is not converted
        plain = teacher is not None and teacher is not model and not _is_channels_last(teacher)
        self.teacher = teacher if plain else None
        self.wanted = wanted
        self.decided = False
        self.channels_last = False  # the model and the teacher are channels-last now
        self.used = False  # the run trains channels-last (what a checkpoint records)

    def inputs(self, x: Tensor) -> Tensor:
        """``x`` in the run's layout (the layout is decided on the first call)."""
        if not self.decided:
            self.decided = True
            self.used = self._try(x)
        return x.contiguous(memory_format=_CL) if self.used and x.dim() == 4 else x

    @torch.no_grad()
    def _try(self, x: Tensor) -> bool:
        m = self.model
        if (
            not self.wanted
            or x.dim() != 4
            or not _has_conv_weights(m)
            or _is_channels_last(m)
            or torch.__future__.get_overwrite_module_params_on_conversion()
        ):
            return False
        probe = x[:4]
        nets = [n for n in (m, self.teacher) if n is not None]
        with modes_kept(m):
            m.eval()
            try:
                refs = [n(probe) for n in nets]
                self._convert(_CL)
                ok = all(
                    isinstance(r, Tensor) and same_logits(n(probe.contiguous(memory_format=_CL)), r)
                    for n, r in zip(nets, refs)
                )
            except Exception:  # a network whose code does not accept channels-last feature maps
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
        self.channels_last = fmt == _CL
        self.model.to(memory_format=fmt)
        if self.teacher is not None:
            self.teacher.to(memory_format=fmt)

    def __enter__(self) -> TrainingLayout:
        return self

    def __exit__(self, *exc: object) -> None:
        """The model and the teacher back in the default layout, if this run changed it."""
        if self.channels_last:
            self._convert(torch.contiguous_format)

"""Train/eval flags of a model and its submodules, kept as the caller set them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag on exit (``model.train(was)`` would set all of them alike)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag

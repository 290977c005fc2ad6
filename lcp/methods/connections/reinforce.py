"""REINFORCE for the connection controller: the Bernoulli policy's entropy, the normalised advantage and one
policy-gradient step (ENAS's loss with an entropy bonus and a KL pull towards the budget's density)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from lcp.methods.connections.controller import Controller, ControllerConfig


def entropy(logits: Tensor) -> Tensor:
    """Entropy of the Bernoulli policy, summed over the connections: (B,)."""
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).sum(-1)


@dataclass
class Advantage:
    """A = (R - b) / s: b and s^2 are moving averages (``decay``, per sample) of the reward and of its squared
    deviation from b, taken from before the batch; the first batch starts them at its own mean and spread."""

    decay: float
    mean: float | None = None
    var: float | None = None

    def __call__(self, rewards: np.ndarray) -> np.ndarray:
        r = np.asarray(rewards, dtype=np.float64)
        if self.mean is None or self.var is None:
            self.mean = float(r.mean())
            self.var = float(np.mean((r - self.mean) ** 2))
        adv = (r - self.mean) / max(math.sqrt(self.var), 1e-8)
        for x in r.tolist():
            self.var = self.decay * self.var + (1 - self.decay) * (x - self.mean) ** 2
            self.mean = self.decay * self.mean + (1 - self.decay) * x
        return adv


def reinforce_step(
    ctl: Controller,
    opt: torch.optim.Optimizer,
    batch: list[tuple[np.ndarray, float]],
    advantage: Advantage,
    cfg: ControllerConfig,
    density: float,
) -> None:
    """One REINFORCE step on a batch of (sampled mask, reward): loss = -mean(A log pi(mask)) - w_H H(pi)
    + w_KL KL(pi || Bernoulli(density)), the gradient norm clipped to ``cfg.grad_clip``."""
    masks = torch.as_tensor(np.stack([k for k, _ in batch]), dtype=torch.float32)
    adv = torch.as_tensor(advantage(np.array([r for _, r in batch])), dtype=torch.float32)
    logits, _ = ctl(masks)
    logp = -F.binary_cross_entropy_with_logits(logits, masks, reduction="none").sum(1)
    ent = entropy(logits)
    p = torch.sigmoid(logits)
    cross = -(p * math.log(density) + (1 - p) * math.log(1 - density)).sum(1)
    loss = (
        -(adv * logp).mean() - cfg.entropy_weight * ent.mean() + cfg.kl_weight * (cross - ent).mean()
    )  # KL = cross-entropy - entropy
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(ctl.parameters(), cfg.grad_clip)
    opt.step()

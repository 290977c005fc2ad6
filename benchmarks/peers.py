"""The peers of ``benchmarks/compare.py``, each driven to lcp's MACs (or params) count of a budget: Torch-Pruning's
global magnitude pruner (``tp_prune``) and NVIDIA Model Optimizer's FastNAS (``mo_prune``). Both are optional
installs (``pip install -e '.[bench]'``; Model Optimizer in a venv of its own, docs/benchmarks.md): each
``*_version`` says whether it is importable."""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn

import lcp
from lcp.errors import LcpError


def first_line(e: BaseException) -> str:
    """An exception as one line: its message's first line (with its type, unless it is lcp's own error)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    if isinstance(e, LcpError) and line:
        return line
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _installed(module: str, distribution: str) -> str | None:
    """The version of ``distribution`` when ``module`` imports (its ``__version__``, else "unknown", when the
    distribution's metadata is missing); None when it does not."""
    try:
        imported = importlib.import_module(module)
    except Exception:
        return None
    try:
        return version(distribution)
    except PackageNotFoundError:
        return str(getattr(imported, "__version__", "unknown"))


def _cost(model: nn.Module, example: torch.Tensor, budget_type: str) -> int:
    """What the budget counts, by lcp's count: MACs on ``example``, or parameters."""
    return lcp.count_macs(model, example) if budget_type == "macs" else lcp.count_params(model)


# --------------------------------------------------------------------------------------------- torch-pruning


def tp_version() -> str | None:
    return _installed("torch_pruning", "torch-pruning")


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The layer that produces the model output (the last Linear, else the last conv): never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1:]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1:]


def tp_prune(
    model: nn.Module,
    example: torch.Tensor,
    *,
    budget: float,
    budget_type: str,
    num_classes: int,
    p: int = 2,
    max_steps: int = 20,
    tolerance: float = 0.01,
) -> tuple[nn.Module, dict]:
    """Torch-Pruning's global magnitude pruner driven to ``budget`` x the baseline MACs (or params).

    The channel ``pruning_ratio`` is bisected (a fresh copy of ``model`` per try) until the result's cost,
    counted by lcp (``count_macs`` / ``count_params``), is at or below the target and within ``tolerance`` of it.
    A result whose forward pass fails or gives the wrong output shape raises ``LcpError`` with the reason.
    """
    import torch_pruning as tp

    base = _cost(model, example, budget_type)
    tries: list[tuple[float, float]] = []

    def attempt(ratio: float) -> tuple[nn.Module, float]:
        m = copy.deepcopy(model).eval()
        pruner = tp.pruner.MagnitudePruner(
            m,
            example,
            importance=tp.importance.MagnitudeImportance(p=p),
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=_classifier(m),
        )
        pruner.step()
        m.eval()
        try:
            with torch.no_grad():
                out = m(torch.randn(2, *example.shape[1:]))
        except Exception as e:
            raise LcpError(
                f"torch_pruning returned a broken network at pruning_ratio {ratio:.4f} (its forward "
                f"fails: {first_line(e)})"
            ) from None
        if tuple(out.shape) != (2, num_classes) or not bool(torch.isfinite(out).all()):
            raise LcpError(
                f"torch_pruning returned a broken network at pruning_ratio {ratio:.4f} (output "
                f"{tuple(out.shape)}, finite {bool(torch.isfinite(out).all())})"
            )
        c = _cost(m, example, budget_type) / base
        tries.append((ratio, c))
        return m, c

    lo, hi, best = 0.0, None, None  # lo: cost above the target; hi: at or below it
    ratio = 1.0 - math.sqrt(budget)  # channels kept ~ sqrt(cost kept) for convs between pruned layers
    for _ in range(max_steps):
        m, c = attempt(ratio)
        if c <= budget:
            hi, best = ratio, (m, c)
            if c >= budget * (1.0 - tolerance):
                break
        else:
            lo = ratio
        if hi is None:
            ratio = min(0.99, (ratio + 1.0) / 2)
            if lo >= 0.99:
                break
        else:
            ratio = (lo + hi) / 2
            if hi - lo < 1e-4:
                break
    if best is None:
        raise LcpError(
            f"torch_pruning cannot reach {budget:g} of the baseline {budget_type}: the most it pruned "
            f"left {min(c for _, c in tries):.3f}"
        )
    m, c = best
    return m, {"tp_pruning_ratio": hi, "tp_tries": len(tries), "cost_ratio": c}


# ------------------------------------------------------------------------------------------- model optimizer


def mo_version() -> str | None:
    return _installed("modelopt.torch.prune", "nvidia-modelopt")


def mo_prune(
    model: nn.Module,
    example: torch.Tensor,
    *,
    budget: float,
    budget_type: str,
    score: Callable[[nn.Module], float],
    checkpoint: Path,
    channel_divisor: int = 4,
    max_tries: int = 4,
    tolerance: float = 0.01,
) -> tuple[nn.Module, dict]:
    """NVIDIA Model Optimizer's FastNAS pruning (``modelopt.torch.prune.prune(mode="fastnas")``) of a copy of
    ``model`` to ``budget`` x the baseline MACs (or params).

    FastNAS measures every layer's ``score`` at each of its widths (a multiple of ``channel_divisor``), then
    bisects one threshold on that damage until its own FLOPs count meets the constraint. Its count may differ a
    little from lcp's and its bisection stops short of the target: while lcp's count of the result is over the
    target or more than ``tolerance`` under it, the constraint is scaled by the miss and the bisection re-run
    (the measured sensitivities are kept in ``checkpoint``, so a retry, or a resumed run, does not measure them
    again); the largest result within the target is returned.
    """
    import modelopt.torch.prune as mtp

    base = _cost(model, example, budget_type)
    key = "flops" if budget_type == "macs" else "params"  # its flops are 2x MACs: a percentage is the same budget
    rules = {
        "nn.Conv2d": {"*": {"channel_divisor": channel_divisor}},
        "nn.BatchNorm2d": {"*": {"feature_divisor": channel_divisor}},
        "nn.Linear": {"*": {"feature_divisor": channel_divisor}},
    }
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    target, tries, best = budget, [], None
    for _ in range(max_tries):
        m = copy.deepcopy(model).eval()
        m, _state = mtp.prune(
            m,
            mode=[("fastnas", rules)],
            constraints={key: f"{100 * target:.4f}%"},
            dummy_input=example,
            config={"score_func": score, "checkpoint": str(checkpoint), "verbose": False},
        )
        c = _cost(m, example, budget_type) / base
        tries.append((target, c))
        if c <= budget + 1e-9 and (best is None or c > best[1]):  # at or under it, as lcp's cut and Torch-Pruning's
            best = (m, c, target)
        if budget * (1.0 - tolerance) <= c <= budget + 1e-9:
            break
        target *= budget / c
    if best is not None:
        return best[0], {"mo_constraint": best[2], "mo_tries": len(tries), "cost_ratio": best[1]}
    raise LcpError(
        f"modelopt cannot meet {budget:g} of the baseline {budget_type} by lcp's count: its results kept "
        + ", ".join(f"{c:.3f} at {100 * t:.1f}%" for t, c in tries)
    )

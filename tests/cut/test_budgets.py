"""Params budgets on a real architecture: the zoo's ResNet-20 (random weights) cut to a fraction of its parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lcp
from tests.helpers import prune_and_check

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet20() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return lcp.create_model("resnet20")


@pytest.mark.parametrize("method", ["global", "uniform", "random"])
@pytest.mark.parametrize("budget", [0.8, 0.5, 0.3])
def test_params_budget_on_resnet20(resnet20, method, budget):
    x = torch.randn(1, 3, 32, 32)
    res = prune_and_check(resnet20, x, budget=budget, budget_type="params", method=method, round_to=1)
    p = res.plan
    assert p.budget_type == "params"
    assert 0.99 * budget <= p.params_ratio <= budget, p.params_ratio  # close to the budget, not only under it
    assert p.params == lcp.count_params(res.model) == round(p.params_ratio * p.params_base)
    assert res.model.linear.out_features == 10  # the classifier keeps its classes


def test_params_and_macs_budgets_cut_differently(resnet20):
    """Parameters sit in the late, wide layers and MACs in the early, large maps: the cuts differ."""
    x = torch.randn(1, 3, 32, 32)
    params = lcp.prune(resnet20, x, budget=0.5, budget_type="params")
    macs = lcp.prune(resnet20, x, budget=0.5, budget_type="macs")
    assert not np.array_equal(params.plan.removed, macs.plan.removed)
    assert (
        params.plan.params_ratio <= 0.5 < macs.plan.params_ratio or macs.plan.macs_ratio <= 0.5 < params.plan.macs_ratio
    )

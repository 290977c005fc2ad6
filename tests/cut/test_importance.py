"""Importance criteria (lcp.cut.importance): every criterion gives a valid, verified cut, and its own ranking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from lcp.cut import importance as imp
from lcp.engine.graph import build_graph
from lcp.errors import LcpError
from lcp.models.zoo import CifarResNet
from tests.helpers import prune_and_check

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (3, 16, 16)

CRITERIA = ("l2", "l1", "bn_scale", "taylor")  # the built-in criteria (lcp.cut.importance registry)
assert set(CRITERIA) <= set(imp.importance_names())


def resnet8(seed: int = 0) -> nn.Module:
    """ResNet-8 with random BatchNorm scales (at init every gamma is 1 and bn_scale could rank nothing)."""
    torch.manual_seed(seed)
    model = CifarResNet(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.2, 1.5)
    return model.eval()


def batches(n: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *SIZE, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def unit_ranking(model: nn.Module, criterion: str) -> np.ndarray:
    graph = build_graph(model, torch.zeros(1, *SIZE))
    scores = imp.unit_scores(graph, imp.filter_scores(graph, criterion, batches()), "mean")
    prunable = np.asarray(graph.prunable_units)
    return prunable[np.argsort(scores[prunable], kind="stable")]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_gives_a_verified_cut(criterion):
    model = resnet8()
    res = prune_and_check(model, torch.randn(1, *SIZE), budget=0.5, importance=criterion, batches=batches())
    assert res.plan.removed.any() and res.plan.macs_ratio >= 0.45


def test_criteria_rank_differently():
    model = resnet8()
    rankings = {c: unit_ranking(model, c) for c in CRITERIA}
    assert all(len(r) == len(rankings["l2"]) for r in rankings.values())
    for a, b in itertools.combinations(CRITERIA, 2):
        assert not np.array_equal(rankings[a], rankings[b]), (a, b)
    # and they lead to different cuts, not only to different orders
    removed = {
        c: prune_and_check(model, torch.randn(1, *SIZE), budget=0.5, importance=c, batches=batches()).plan.removed
        for c in CRITERIA
    }
    assert len({r.tobytes() for r in removed.values()}) == len(CRITERIA)


def test_taylor_depends_on_the_data_and_needs_it():
    model = resnet8()
    graph = build_graph(model, torch.zeros(1, *SIZE))
    a = imp.filter_scores(graph, "taylor", batches(seed=0))
    b = imp.filter_scores(graph, "taylor", batches(seed=1))
    assert any(not np.allclose(a[k], b[k]) for k in a)
    assert all(model.training is False and p.grad is None for p in model.parameters())  # no gradients left
    with pytest.raises(LcpError, match="importance 'taylor' needs data"):
        imp.filter_scores(graph, "taylor")
    with pytest.raises(LcpError, match="unknown importance 'l3'; choose one of l2, l1, bn_scale, taylor"):
        imp.filter_scores(graph, "l3")


def test_l1_and_bn_scale_read_what_they_name():
    model = resnet8()
    graph = build_graph(model, torch.zeros(1, *SIZE))
    modules = dict(model.named_modules())
    l1 = imp.filter_scores(graph, "l1")
    ri = graph.record_index["conv1"]
    expected = modules["conv1"].weight.detach().double().abs().flatten(1).sum(1).numpy()
    np.testing.assert_allclose(l1[ri], expected)
    bn = imp.filter_scores(graph, "bn_scale")
    # conv1's channels are the residual stream of layer1: its score is the mean |gamma| of the BNs on that stream
    assert not np.allclose(bn[ri], expected) and np.all(bn[ri] > 0) and np.all(bn[ri] <= 1.5)
    # without a stream, a conv's score is exactly the |gamma| of the BN after it (signs dropped)
    torch.manual_seed(0)
    plain = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1),
        nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    ).eval()  # fmt: skip
    for bn_layer in (plain[1], plain[4]):
        nn.init.uniform_(bn_layer.weight, -1.5, 1.5)
    g = build_graph(plain, torch.zeros(1, *SIZE))
    scores = imp.filter_scores(g, "bn_scale")
    for conv, bn_layer in (("0", plain[1]), ("3", plain[4])):
        np.testing.assert_allclose(scores[g.record_index[conv]], bn_layer.weight.detach().abs().double().numpy())


def test_taylor_scores_frozen_weights_and_leaves_them_as_they_were():
    """Frozen layers (``requires_grad=False``) get the scores they would get trainable, even when every
    parameter is frozen; afterwards every ``requires_grad`` and ``.grad`` is the caller's again."""
    graph = build_graph(resnet8(), torch.zeros(1, *SIZE))
    trainable = imp.filter_scores(graph, "taylor", batches())
    model = graph.model
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    kept_grad = model.linear.weight.grad = torch.ones_like(model.linear.weight)
    partly = imp.filter_scores(graph, "taylor", batches())
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = imp.filter_scores(graph, "taylor", batches())
    for scores in (partly, frozen):
        assert all(np.allclose(scores[ri], trainable[ri]) for ri in trainable)
    assert model.linear.weight.grad is kept_grad and torch.equal(kept_grad, torch.ones_like(kept_grad))
    assert all(not p.requires_grad and (p.grad is None) == (p is not model.linear.weight) for p in model.parameters())


def test_bn_scale_ignores_per_channel_prelu_slopes():
    """A per-channel PReLU after the BN is recorded with the channels (its slopes are sliced with them), but its
    slopes are no gamma: the score stays the BN's |gamma|."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.PReLU(8), nn.Conv2d(8, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    ).eval()  # fmt: skip
    nn.init.uniform_(model[1].weight, 0.2, 1.5)
    nn.init.uniform_(model[2].weight, 5.0, 6.0)
    graph = build_graph(model, torch.zeros(1, *SIZE))
    scores = imp.filter_scores(graph, "bn_scale")[graph.record_index["0"]]
    np.testing.assert_allclose(scores, model[1].weight.detach().abs().double().numpy())

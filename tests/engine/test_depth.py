"""Depth units (``lcp.engine.depth``): which residual branches can go whole, the walk that empties them in the
global ranking, the surgery that removes them, verification, exact cost, and a saved model that loads again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lcp
from lcp.engine.depth import ZeroInput, depth_units, empty_groups
from tests.helpers import prune_and_check


def _weaken(model: nn.Module, names: list[str]) -> None:
    """Make the filters of ``names`` tiny, so that the L2 ranking reaches all of them first."""
    with torch.no_grad():
        for n in names:
            model.get_submodule(n).weight.mul_(1e-4)


def _units(model: nn.Module, size: int = 32) -> dict[str, str]:
    graph = lcp.build_graph(model.eval(), torch.zeros(1, 3, size, size))
    return {graph.groups[g].name: d.consumer for g, d in depth_units(graph).items()}


def test_every_residual_block_of_the_zoo_resnets_and_mobilenetv2_is_a_depth_unit():
    units = _units(lcp.create_model("resnet20"))
    assert len(units) == 9 and units["layer1.0.conv1"] == "layer1.0.conv2"  # downsampling blocks included
    units = _units(lcp.create_model("mobilenetv2"))
    # the 10 inverted residuals with a skip (stride 1, same width); the group is the expansion, the consumer
    # the projection
    assert len(units) == 10 and units["features.3.conv.0.0+1"] == "features.3.conv.2"


def test_torchvision_resnet_blocks_with_a_downsample_conv_are_depth_units():
    import torchvision

    units = _units(torchvision.models.resnet18(num_classes=10), size=64)
    assert len(units) == 8 and units["layer2.0.conv1"] == "layer2.0.conv2"
    units = _units(torchvision.models.resnet50(num_classes=10), size=64)
    # bottlenecks: the first inner group (emptying the second would leave conv1 computing for nothing)
    assert len(units) == 16 and units["layer1.0.conv1"] == "layer1.0.conv2" and "layer1.0.conv2" not in units


class PreAct(nn.Module):
    """x + conv2(relu(bn2(conv1(relu(bn1(x)))))): bn1 dies with the branch and the cost model counts it as
    stream channels, so the branch is not a depth unit (a conservative refusal)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return self.head(x.mean((2, 3)))


class SqueezeTail(nn.Module):
    """x + se(conv2(conv1(x))): the consumer's output is read twice (the gate), so no single-use tail."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.gate = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        y = self.conv2(F.relu(self.conv1(x)))
        x = x + y * torch.sigmoid(self.gate(y.mean((2, 3), keepdim=True)))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("cls", [PreAct, SqueezeTail])
def test_branches_whose_removal_the_cost_model_cannot_price_are_not_depth_units(cls):
    assert _units(cls()) == {}


@pytest.mark.parametrize(
    "name,weak",
    [
        ("resnet20", ["layer1.1.conv1", "layer2.0.conv1", "layer3.2.conv1"]),
        ("mobilenetv2", ["features.3.conv.0.0", "features.3.conv.1.0", "features.13.conv.0.0", "features.13.conv.1.0"]),
    ],
)
def test_the_walk_empties_depth_units_and_the_cut_is_verified_and_exact(name, weak, tmp_path):
    torch.manual_seed(0)
    model = lcp.create_model(name).eval()
    _weaken(model, weak)
    x = torch.randn(1, 3, 32, 32)
    plain = lcp.prune(model, x, budget=0.5)
    assert empty_groups(plain.graph, plain.plan.removed) == []  # without depth, groups stop at their floor
    res = prune_and_check(model, x, budget=0.5, depth=True)  # verified, exact MACs and params, trains
    gone = {res.graph.groups[g].name for g in empty_groups(res.graph, res.plan.removed)}
    blocks = {w.rsplit(".conv", 1)[0] if name == "resnet20" else w.rsplit(".conv.", 1)[0] for w in weak}
    assert len(gone) == len(blocks)
    names = dict(res.model.named_modules())
    for w in weak:
        assert w not in names  # the branch's convs are gone
    consumers = [m for m in res.model.modules() if isinstance(m, ZeroInput)]
    assert len(consumers) == len(blocks)
    # the same walk, same seed: the same cut; and it saves and loads
    again = lcp.prune(model, x, budget=0.5, depth=True)
    assert np.array_equal(again.plan.removed, res.plan.removed)
    lcp.save(res, tmp_path / "run", model_name=name)
    loaded = lcp.load(tmp_path / "run")
    batch = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(batch), res.model.eval()(batch), atol=1e-5)
    assert lcp.count_macs(loaded, x) == res.plan.macs
    if name == "resnet20":  # the shallower network deploys like any other (the export checks its parity)
        lcp.export(tmp_path / "run", format="torchscript")


def test_ignore_and_caps_keep_a_block():
    torch.manual_seed(0)
    model = lcp.create_model("resnet20").eval()
    _weaken(model, ["layer1.1.conv1", "layer2.1.conv1"])
    x = torch.randn(1, 3, 32, 32)
    res = lcp.prune(model, x, budget=0.5, depth=True, max_removal={"layer1.1.conv1": 0.5})
    gone = {res.graph.groups[g].name for g in empty_groups(res.graph, res.plan.removed)}
    assert gone == {"layer2.1.conv1"}


class _ConcatBranch(nn.Module):
    """y = x + c2(cat([relu(c1(x)), x])): c2 reads the stream too, so emptying c1 does not remove the branch."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(torch.cat([torch.relu(self.c1(x)), x], 1))


def test_a_branch_whose_consumer_reads_more_than_the_group_is_no_depth_unit():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), _ConcatBranch(), _ConcatBranch(), nn.Flatten(), nn.LazyLinear(10)
    )
    x = torch.zeros(1, 3, 8, 8)
    model(x)
    graph = lcp.build_graph(model.eval(), x)
    assert not depth_units(graph)  # c1's group is not the whole input of c2: emptying it would zero the stream's half
    res = lcp.prune(model, x, budget=0.5, depth=True, round_to=1)
    assert res.verification.ok

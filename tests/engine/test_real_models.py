"""End-to-end engine test on real architectures: lcp's CIFAR zoo and 20 timm ImageNet models.

Each model is pruned to 50% of its MACs with the global ranking and must: verify against the masked
original, run forward and backward, keep its output shape, land in [0.99, 1] x target, and have its
re-counted MACs/params equal the plan's. The MACs of the original and the built network are cross-checked with
an independent counter, ptflops (see ``ptflops_macs`` for how its numbers are made comparable), and must equal
torch's own ``FlopCounterMode`` (FLOPs / 2) exactly.

Inputs: zoo models at 1x3x32x32 (their native size); timm models at a reduced 1x3x64x64 to keep CI
fast (every one of these 20 works at 64x64; the benchmark script runs them at their default size).
The whole file takes about 1 minute on 2 CPU cores with one intra-op thread (the ``one_thread`` fixture).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lcp
from tests.helpers import TIMM_MODELS

timm = pytest.importorskip("timm")
ptflops = pytest.importorskip("ptflops")
from ptflops.pytorch_ops import MODULES_MAPPING, conv_flops_counter_hook, linear_flops_counter_hook  # noqa: E402

ZOO_MODELS = ["resnet20", "resnet56", "mobilenetv2", "densenet40"]
TIMM_INPUT = 64  # reduced from 224 for speed; the smallest side that every model above handles is 32
ZOO_INPUT = 32

# Known engine bugs (see tests/engine/test_ops.py for minimal reproducers).
XFAIL: dict[str, str] = {}  # model name -> reason, for models that are known to fail

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# On a shared 2-core machine, 2 intra-op threads make conv2d up to 100x slower (OpenMP contention);
# with one thread this file runs in about a minute.
pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name in ZOO_MODELS:
        try:
            from lcp.models.factory import create_model

            model = create_model(name, num_classes=10)
        except ImportError:  # lcp.models.factory not written yet: the zoo registry directly
            from lcp.models.zoo import ZOO

            model = ZOO[name](num_classes=10)
        size = ZOO_INPUT
    else:
        model = timm.create_model(name, num_classes=10, pretrained=False)
        size = TIMM_INPUT
    return model, torch.randn(1, 3, size, size)


def ptflops_macs(model: nn.Module, x: torch.Tensor) -> int:
    """ptflops' count of the conv and linear layers of ``model`` on ``x``, made comparable with lcp's.

    How ptflops (pytorch backend) counts a conv: ``out_positions * k_h * k_w * in_channels * out_channels /
    groups`` plus one add per output element when the conv has a bias; a linear: ``prod(input.shape[:-1]) *
    in_features * out_features`` plus ``out_features`` per row for a bias. It also counts BatchNorm, ReLU,
    pooling, upsampling and (patched) functionals and tensor ops, and it only hooks *exact* module types.

    lcp's convention is the weight multiply-accumulates of conv/linear layers only, without bias adds, over
    every ``isinstance`` conv/linear. To compare the same thing, we run ptflops on a copy of the model
    (1) with every conv/linear bias set to None (the forward shapes do not change; the bias adds vanish),
    (2) with every non conv/linear module type it knows in ``ignore_modules`` and functional counting off,
    (3) with conv/linear subclasses (timm's Conv2dSame, Linear...) mapped to ptflops' own hooks.
    What remains is ptflops' own arithmetic over the same layers, which must agree with lcp.count_macs.
    """
    m = copy.deepcopy(model).eval()
    custom = {}
    for mod in m.modules():
        if isinstance(mod, _CONVS + (nn.Linear,)):
            if mod.bias is not None:
                mod.bias = None
            if type(mod) not in MODULES_MAPPING:
                custom[type(mod)] = conv_flops_counter_hook if isinstance(mod, _CONVS) else linear_flops_counter_hook
    ignore = [t for t in MODULES_MAPPING if t not in _CONVS + (nn.Linear,)]
    macs, _ = ptflops.get_model_complexity_info(
        m,
        tuple(x.shape[1:]),
        as_strings=False,
        print_per_layer_stat=False,
        backend="pytorch",
        input_constructor=lambda _: x,
        ignore_modules=ignore,
        custom_modules_hooks=custom,
        backend_specific_config={"count_functional": False},
    )
    assert macs is not None, "ptflops failed on this model"
    return int(macs)


def _params(names: list[str]) -> list:
    out = []
    for n in names:
        marks = [pytest.mark.xfail(strict=True, raises=lcp.LcpError, reason=XFAIL[n])] if n in XFAIL else []
        out.append(pytest.param(n, marks=marks, id=n))
    return out


def check_model(model: nn.Module, x: torch.Tensor) -> lcp.PruneResult:
    was = model.training
    with torch.no_grad():
        shape = model.eval()(x).shape
    model.train(was)
    res = lcp.prune(model, x, budget=0.5, method="global", round_to=1)  # any width: lands within 1%
    p = res.plan
    assert res.verification.ok, res.verification
    target = 0.5 * p.macs_base
    assert 0.99 * target <= p.macs <= target, p.describe()
    pruned = res.model
    assert lcp.count_macs(pruned, x) == p.macs
    assert lcp.count_params(pruned) == p.params
    with torch.no_grad():
        assert pruned.eval()(x).shape == shape
    # an independent counter over the same layers agrees (exactly, in practice; 1% is the contract), and torch's
    # own FlopCounterMode (FLOPs / 2) exactly, before and after the cut
    from torch.utils.flop_counter import FlopCounterMode

    for net, ours in ((model, p.macs_base), (pruned, p.macs)):
        theirs = ptflops_macs(net, x)
        assert abs(theirs - ours) <= 0.01 * ours, (theirs, ours)
        was = net.training
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            net.eval()(x)
        net.train(was)
        assert flops.get_total_flops() // 2 // x.shape[0] == ours
    # forward + backward in train mode (batch 2 so BatchNorm sees >1 value per channel), on a copy
    net = copy.deepcopy(pruned).train()
    out = net(torch.randn(2, *x.shape[1:]))
    assert out.shape[1:] == shape[1:]
    out.float().square().mean().backward()
    grads = [q.grad for q in net.parameters() if q.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    return res


@pytest.mark.parametrize("name", _params(ZOO_MODELS + TIMM_MODELS))
def test_prune_half_macs(name):
    model, x = build(name)
    check_model(model, x)


def test_ghostnet_eval_mode():
    # ghostnet's graph itself is handled: in eval mode the rewritten GraphModule is correct (for eval)
    model, x = build("ghostnet_100")
    res = check_model(model.eval(), x)
    assert isinstance(res.model, torch.fx.GraphModule)

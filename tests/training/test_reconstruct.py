"""Least-squares reconstruction after a cut (lcp.training.reconstruct) and its place in the post-cut stage."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lcp
from lcp.models.zoo import CifarResNet
from lcp.training.reconstruct import reconstruct
from tests.helpers import SEARCH_SIZE, random_bundle, tiny_densenet


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so that no channel is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()


def _inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *SEARCH_SIZE, generator=torch.Generator().manual_seed(seed))


def _logit_error(pruned: nn.Module, original: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.mse_loss(pruned(x), original(x)))


def test_reconstruction_brings_the_cut_closer_to_the_original() -> None:
    torch.manual_seed(0)
    original = _trained_like(CifarResNet(1))
    res = lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), budget=0.5, method="global", round_to=1)
    cut = copy.deepcopy(res.model)
    info = reconstruct(res.model, original, res.graph, res.plan.removed, [(_inputs(256), None)], images=256)
    assert info["layers"] > 0 and info["layers"] <= info["candidates"]
    unseen = _inputs(128, seed=2)
    assert _logit_error(res.model, original, unseen) < 0.8 * _logit_error(cut, original, unseen)
    # the cut's shapes stay, and only weights changed
    assert {k: v.shape for k, v in res.model.state_dict().items()} == {k: v.shape for k, v in cut.state_dict().items()}
    assert res.model.training is False and original.training is False


def test_reconstruction_is_deterministic_and_leaves_the_original_alone() -> None:
    torch.manual_seed(0)
    original = _trained_like(CifarResNet(1))
    before = {k: v.clone() for k, v in original.state_dict().items()}
    a = lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), budget=0.5, method="global", round_to=1)
    b = lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), budget=0.5, method="global", round_to=1)
    for r in (a, b):
        reconstruct(r.model, original, r.graph, r.plan.removed, [(_inputs(64), None)] * 2, images=96, seed=3)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert all(torch.equal(v, before[k]) for k, v in original.state_dict().items())


def test_an_uncut_network_keeps_its_weights() -> None:
    """Nothing removed: the cut weights already reproduce the original, so no layer is replaced."""
    original = _trained_like(CifarResNet(1))
    res = lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), budget=1.0, method="global", round_to=1)
    before = copy.deepcopy(res.model.state_dict())
    info = reconstruct(res.model, original, res.graph, res.plan.removed, [(_inputs(128), None)])
    assert info["layers"] == 0
    assert all(torch.equal(v, before[k]) for k, v in res.model.state_dict().items())


def test_connection_pruned_layers_are_left_as_cut() -> None:
    """DenseNet connection pruning changes input widths the channel plan does not describe: those layers keep
    their cut weights instead of being refitted to the wrong shape."""
    original = tiny_densenet()
    res = lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), budget=0.6, method="ads", data=random_bundle(), episodes=2)
    before = {k: v.clone() for k, v in res.model.state_dict().items()}
    reconstruct(res.model, original, res.graph, res.plan.removed, [(_inputs(64), None)])
    with torch.no_grad():
        assert torch.isfinite(res.model(_inputs(8))).all()
    full = dict(original.named_modules())
    narrowed = [
        name
        for name, m in res.model.named_modules()
        if isinstance(m, torch.nn.Conv2d) and m.in_channels < full[name].in_channels
    ]
    assert narrowed  # connections were removed: these layers read fewer inputs than the channel plan says
    for name in narrowed:
        assert torch.equal(res.model.get_submodule(name).weight, before[f"{name}.weight"]), name


@pytest.fixture
def refits(monkeypatch) -> list[int]:
    """The ``images`` of every refit the post-cut stage makes (``run.recover`` calls ``reconstruct``)."""
    import lcp.run.recover as recover_module

    calls: list[int] = []
    real = recover_module.reconstruct

    def spy(*args, **kw):
        calls.append(kw["images"])
        return real(*args, **kw)

    monkeypatch.setattr(recover_module, "reconstruct", spy)
    return calls


def test_the_post_cut_stage_reconstructs_when_asked(refits) -> None:
    calls = refits
    original = _trained_like(CifarResNet(1))
    bundle = random_bundle()
    kw = dict(budget=0.5, method="global", round_to=1, data=bundle, finetune_epochs=0, recal_batches=1)
    lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), reconstruct_images=0, **kw)
    assert calls == []
    lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), reconstruct_images=64, **kw)
    assert calls == [64]


def test_a_cut_that_is_not_fine_tuned_is_refitted_unless_told_otherwise(refits) -> None:
    from lcp.errors import LcpError
    from lcp.training.options import AUTO_REFIT_IMAGES

    calls = refits
    original = _trained_like(CifarResNet(1))
    kw = dict(budget=0.5, method="global", round_to=1, data=random_bundle(), recal_batches=1)
    res = lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), finetune_epochs=0, **kw)  # reconstruct_images "auto"
    assert calls == [AUTO_REFIT_IMAGES]
    assert res.report.iloc[0]["reconstructed_layers"] > 0  # the report says the cut was refitted
    lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), finetune_epochs=1, batch_size=64, **kw)
    assert calls == [AUTO_REFIT_IMAGES]  # a fine-tuned cut is not refitted by default
    lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), finetune_epochs=1, batch_size=64, reconstruct_images=32, **kw)
    assert calls == [AUTO_REFIT_IMAGES, 32]  # unless asked
    with pytest.raises(LcpError, match="reconstruct_images must be a whole number or auto, got 'many'"):
        lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), reconstruct_images="many", **kw)


def test_fewer_images_when_their_activations_would_not_fit_in_memory() -> None:
    original = _trained_like(CifarResNet(1))
    res = lcp.prune(original, torch.zeros(1, *SEARCH_SIZE), budget=0.5, method="global", round_to=1)
    # the widest activation of this network on a 16x16 image: 16 channels x 16 x 16 floats, 16 KiB: 20 images fit
    info = reconstruct(res.model, original, res.graph, res.plan.removed, [(_inputs(256), None)], memory=20 * 2**14)
    assert 1 <= info["images"] < 256 and info["layers"] > 0
    assert reconstruct(res.model, original, res.graph, res.plan.removed, [(_inputs(64), None)])["images"] == 64


def test_a_run_signature_holds_the_images_the_refit_used() -> None:
    """``auto`` and the number it means are one run (a folder made either way resumes either way), and a
    fine-tuned run's signature is what it was before the refit had an ``auto``: 0."""
    from lcp.run.config import PruneConfig

    auto = PruneConfig(model="resnet20", finetune_epochs=0).signature()
    assert auto == PruneConfig(model="resnet20", finetune_epochs=0, reconstruct_images=1024).signature()
    assert auto["reconstruct_images"] == 1024
    assert PruneConfig(model="resnet20", finetune_epochs=3).signature()["reconstruct_images"] == 0


def test_lcp_prune_says_it_refits_and_reports_it(tiny_folder, resnet20_ckpt, tmp_path) -> None:
    """The command line: a cut that is not fine-tuned is refitted (the log says so before it starts, and after),
    the report counts the layers; ``--reconstruct-images 0`` keeps the cut as made; a bad word is exit 2."""
    from tests.helpers import lcp_cli, read_csv, tiny_args

    done = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, tmp_path / "refit"))
    assert done.code == 0, done.err
    assert "refitting the cut's layers" in done.out + done.err and "after refitting" in done.out + done.err
    assert int(read_csv(tmp_path / "refit" / "report.csv")[0]["reconstructed_layers"]) > 0
    plain = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, tmp_path / "plain", "--reconstruct-images", "0"))
    assert plain.code == 0 and "refitting" not in plain.out + plain.err
    assert "reconstructed_layers" not in read_csv(tmp_path / "plain" / "report.csv")[0]
    bad = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, tmp_path / "bad", "--reconstruct-images", "many"))
    assert bad.code == 2 and "--reconstruct-images must be a whole number or auto, got 'many'" in bad.err

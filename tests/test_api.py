"""The Python API with data: ``lcp.prune(model, ..., data=...)`` recalibrates, fine-tunes and reports; ``lcp.save``
and ``lcp.load`` round-trip the pruned model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import lcp
from lcp.cut.ranking import Transforms
from lcp.report import REPORT_COLUMNS
from lcp.training.data import load_data
from lcp.training.train import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle(tiny_folder: Path):
    return load_data(tiny_folder, input_size=(3, 32, 32), holdout=9)


def _model(resnet20_ckpt: Path) -> torch.nn.Module:
    return lcp.create_model("resnet20", num_classes=3, checkpoint=resnet20_ckpt)


def test_prune_with_data_reports_and_round_trips(bundle, resnet20_ckpt: Path, tmp_path: Path) -> None:
    model = _model(resnet20_ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = lcp.prune(model, budget=0.5, data=bundle, finetune_epochs=1, lr=0.05, recal_batches=2)
    df = res.report
    assert list(df.columns) == REPORT_COLUMNS and len(df) == 1
    row = df.iloc[0]
    assert (row["method"], row["budget"], row["finetune_epochs"], row["model"]) == ("global", 0.5, 1, "resnet20")
    assert 0.49 <= row["macs_ratio"] <= 0.5
    assert row["macs_pruned"] == lcp.count_macs(res.model, torch.zeros(1, 3, 32, 32))
    assert row["params_pruned"] == lcp.count_params(res.model) < row["params_base"]
    # the report's accuracies are the models' accuracies on the test split
    test = bundle.loader("test", 256)
    assert row["top1_base"] == pytest.approx(evaluate(model, test)["top1"])
    assert row["top1_pruned"] == pytest.approx(evaluate(res.model, test)["top1"])
    assert 0 <= row["top1_pruned_noft"] <= 100 and row["finetune_s"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched

    out = lcp.save(res, tmp_path / "api")
    loaded = lcp.load(out)
    assert not loaded.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), res.model.eval()(x), rtol=1e-5, atol=1e-6)
    assert lcp.count_macs(loaded, torch.zeros(1, 3, 32, 32)) == row["macs_pruned"]


def test_prune_with_data_fine_tunes(bundle, resnet20_ckpt: Path) -> None:
    """Fine-tuning moves the weights (and the report says 0 epochs when there were none)."""
    kw = dict(budget=0.5, data=bundle, lr=0.05, recal_batches=2)
    none = lcp.prune(_model(resnet20_ckpt), finetune_epochs=0, reconstruct_images=0, **kw)  # the cut as made
    one = lcp.prune(_model(resnet20_ckpt), finetune_epochs=1, **kw)
    assert np.array_equal(none.plan.removed, one.plan.removed)
    r0, r1 = none.report.iloc[0], one.report.iloc[0]
    assert r0["top1_pruned"] == r0["top1_pruned_noft"] and r0["finetune_epochs"] == 0
    assert r1["top1_pruned_noft"] == pytest.approx(r0["top1_pruned_noft"])  # the same cut and recalibration
    assert not torch.equal(none.model.linear.weight, one.model.linear.weight)


def test_prune_with_plain_loaders(bundle, resnet20_ckpt: Path) -> None:
    loaders = {"train": bundle.loader("train", 32, shuffle=True), "test": bundle.loader("test", 64)}
    with pytest.raises(lcp.LcpError, match="a dict of loaders serves the recovery only"):  # "needs data" before
        lcp.prune(_model(resnet20_ckpt), budget=0.6, data=loaders, method="lcp")
    res = lcp.prune(_model(resnet20_ckpt), budget=0.6, data=loaders, recal_batches=1)
    row = res.report.iloc[0]
    assert row["dataset"] == "loaders" and 0.59 <= row["macs_ratio"] <= 0.6
    assert row["top1_pruned"] == pytest.approx(evaluate(res.model, loaders["test"])["top1"])


def test_prune_without_inputs_or_data_is_refused(resnet20_ckpt: Path) -> None:
    with pytest.raises(lcp.LcpError, match=r"pass example_inputs \(e.g. torch.zeros"):
        lcp.prune(_model(resnet20_ckpt), budget=0.5)
    with pytest.raises(lcp.LcpError, match="method 'lcp' needs transforms or data"):
        lcp.prune(_model(resnet20_ckpt), torch.zeros(1, 3, 32, 32), method="lcp")
    # an option of lcp prune that the API would otherwise ignore (it returned a global cut instead)
    with pytest.raises(lcp.LcpError, match="structure_from is an option of lcp prune, not of lcp.prune"):
        lcp.prune(_model(resnet20_ckpt), torch.zeros(1, 3, 32, 32), structure_from="runs/anything")
    # transforms with a method that does not use them (the default, global) were silently ignored
    tf = Transforms.identity(lcp.build_graph(_model(resnet20_ckpt), torch.zeros(1, 3, 32, 32)))
    with pytest.raises(lcp.LcpError, match="method 'global' would ignore them"):
        lcp.prune(_model(resnet20_ckpt), torch.zeros(1, 3, 32, 32), transforms=tf)


def test_options_lcp_prune_would_ignore_are_refused(resnet20_ckpt: Path) -> None:
    x = torch.zeros(1, 3, 32, 32)
    for options, phrase in [
        ({"budgets": [0.7, 0.3]}, "lcp.prune cuts one budget"),  # it returned one 0.5 cut
        ({"finetune_epochs": 3}, "finetune_epochs acts on data: pass data="),  # no data: nothing was fine-tuned
        ({"reconstruct_images": 64}, "reconstruct_images acts on data"),
        ({"out": "runs/x"}, "out is an option of lcp prune"),  # no folder was written
        ({"max_removal": ["layer1*=0.2"]}, "max_removal must be a dict"),  # an AttributeError before
    ]:
        with pytest.raises(lcp.LcpError, match=phrase):
            lcp.prune(_model(resnet20_ckpt), x, **options)
    lcp.prune(_model(resnet20_ckpt), x, reconstruct_images=0)  # no refit without data anyway: not refused
    if not torch.cuda.is_available():  # the whole cut ran before torch said there is no driver
        with pytest.raises(lcp.LcpError, match="no CUDA device"):
            lcp.prune(_model(resnet20_ckpt), x, device="cuda")
    with pytest.raises(lcp.LcpError, match="not a shape"):  # an AttributeError before
        lcp.prune(_model(resnet20_ckpt), (1, 3, 32, 32))
    with pytest.raises(lcp.LcpError, match="not a CifarResNet"):
        lcp.save(_model(resnet20_ckpt), "unused")
    # arguments of the wrong type failed deep inside (AttributeError, TypeError) or pruned on garbage
    for args, kwargs, phrase in [
        (("resnet20", x), {}, "takes the model itself .* not a str"),
        ((_model(resnet20_ckpt), np.zeros((1, 3, 32, 32), np.float32)), {}, "torch.from_numpy .* not a ndarray"),
        ((_model(resnet20_ckpt), [1.0, 2.0]), {}, "example_inputs are torch tensors .* not a float"),
        ((_model(resnet20_ckpt), x), {"ignore": 3}, "ignore takes module-name globs"),
        ((_model(resnet20_ckpt), x), {"ignore": [3]}, "ignore takes module-name globs"),
        ((_model(resnet20_ckpt), x), {"data": 5}, "data is a data set name.* not a value of type int"),
        ((_model(resnet20_ckpt), x), {"data": {"train": []}}, "holds 'train' and 'test' loaders"),
        ((_model(resnet20_ckpt), x), {"method": "lcp", "transforms": {"a": 1}}, "not a dict"),
        ((_model(resnet20_ckpt), x), {"importance": "taylor", "batches": []}, "'taylor' got no batches"),
        ((_model(resnet20_ckpt), x), {"importance": "taylor", "batches": [x]}, "takes \\(images, labels\\)"),
    ]:
        with pytest.raises(lcp.LcpError, match=phrase):
            lcp.prune(*args, **kwargs)
    # one glob as a string is that glob, not its characters
    kept = lcp.prune(_model(resnet20_ckpt), x, ignore="layer1.*", round_to=1).model
    assert all(kept.get_submodule(f"layer1.{i}.conv1").out_channels == 16 for i in range(3))
    kept = lcp.prune(_model(resnet20_ckpt), x, ignore={"layer1.*"}, round_to=1).model  # any iterable of globs
    assert all(kept.get_submodule(f"layer1.{i}.conv1").out_channels == 16 for i in range(3))


def test_transforms_are_matched_to_the_model_by_group_name(resnet20_ckpt: Path) -> None:
    x = torch.zeros(1, 3, 32, 32)
    other = lcp.prune(lcp.create_model("resnet56", num_classes=3), x, method="uniform").transforms
    with pytest.raises(lcp.LcpError, match="does not fit this model"):  # applied by position before
        lcp.prune(_model(resnet20_ckpt), x, method="lcp", transforms=other)
    own = Transforms.identity(lcp.build_graph(_model(resnet20_ckpt), x))
    own.alpha = np.linspace(0.5, 2.0, len(own.alpha))
    shuffled = Transforms(own.alpha[::-1].copy(), own.kappa[::-1].copy(), own.groups[::-1])  # same pairs, reordered
    a = lcp.prune(_model(resnet20_ckpt), x, method="lcp", transforms=own, round_to=1)
    b = lcp.prune(_model(resnet20_ckpt), x, method="lcp", transforms=shuffled, round_to=1)
    assert (a.plan.removed == b.plan.removed).all()
    # a compensation learned on other scores is refused, here as on the command line (it was applied before)
    own.learned_with = {"importance": "l1", "aggregate": "mean"}
    with pytest.raises(lcp.LcpError, match="learned on scores of importance=l1: its compensation"):
        lcp.prune(_model(resnet20_ckpt), x, method="lcp", transforms=own, round_to=1)
    l1 = lcp.prune(_model(resnet20_ckpt), x, method="lcp", transforms=own, importance="l1", round_to=1)
    assert np.array_equal(l1.transforms.alpha, own.alpha) and l1.verification.ok


def test_a_data_path_is_loaded_with_the_given_holdout_and_input_size(
    tiny_folder: Path, resnet20_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lcp.api

    seen: dict = {}

    def spy(spec, **kw):
        seen.update(kw)
        return load_data(spec, **kw)

    monkeypatch.setattr(lcp.api, "load_data", spy)
    res = lcp.prune(_model(resnet20_ckpt), (torch.zeros(1, 3, 32, 32),), data=str(tiny_folder), holdout=9)
    assert seen["holdout"] == 9 and tuple(seen["input_size"]) == (3, 32, 32)  # holdout was dropped (5000)
    assert res.report is not None
    lcp.prune(
        lcp.create_model("resnet20", num_classes=3), (torch.zeros(1, 3, 40, 40),), data=str(tiny_folder), holdout=9
    )
    assert tuple(seen["input_size"]) == (3, 40, 40)  # a tuple of inputs fell back to 32 px


def test_a_pruned_timm_model_describes_its_pruned_widths() -> None:
    x = torch.randn(1, 3, 64, 64)
    pruned = lcp.prune(lcp.create_model("efficientnet_b0", num_classes=10), x).model.eval()
    assert pruned.num_features == pruned.conv_head.out_channels < 1280  # the original's 1280 before
    pruned.reset_classifier(5)
    assert pruned(x).shape == (1, 5)


def _small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 2),
    )


def test_prune_with_data_leaves_the_callers_model_in_its_mode() -> None:
    """The recovery evaluated the original and distilled from it in eval mode, and left it there."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 2, (16,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    model = _small_net().train()
    model[1].eval()  # a mix of modes, as the caller set them
    before = [m.training for m in model.modules()]
    res = lcp.prune(
        model, x[:1], budget=0.5, round_to=1, data={"train": loader, "test": loader}, finetune_epochs=1, recal_batches=1
    )
    assert res.report is not None
    assert [m.training for m in model.modules()] == before  # (its device is put back too: checked only on a GPU)


def test_out_of_range_numbers_are_lcp_errors() -> None:
    """A negative seed or one of 2**64 failed in numpy or torch; an int beyond float's range raised OverflowError."""
    x = torch.zeros(1, 3, 8, 8)
    for kw, phrase in [
        ({"seed": -1, "method": "random"}, r"seed must be between 0 and 2\*\*63-1, got -1"),
        ({"seed": 2**64}, r"seed must be between 0 and 2\*\*63-1"),
        ({"lr": 10**400}, "lr must be a finite number"),
        ({"min_ratio": 10**400}, "min_ratio must be a finite number"),
    ]:
        with pytest.raises(lcp.LcpError, match=phrase):
            lcp.prune(_small_net(), x, **kw)


def test_refusals_name_keyword_arguments_not_flags() -> None:
    """lcp.prune's errors named most options by their command-line flags (--time-aware, --budget-type latency)."""
    x = torch.zeros(1, 3, 8, 8)
    for kw, phrase in [
        ({"time_aware": True}, "time_aware ranks by the time a channel saves: it needs budget_type='latency'"),
        ({"search_time": 5.0}, "search_time is an option of method lcp; .* choose method='lcp'"),
        ({"method": "uniform", "depth": True}, "method uniform would ignore depth: drop it or choose method='lcp'"),
    ]:
        with pytest.raises(lcp.LcpError, match=phrase) as err:
            lcp.prune(_small_net(), x, **kw)
        assert "--" not in str(err.value), err.value
    words = lcp.api._FLAG.sub(lcp.api._keyword, "it takes --budget-type macs or latency; --device cuda: none")
    assert words == "it takes budget_type='macs' or 'latency'; device cuda: none"
    with pytest.raises(lcp.LcpError, match=r"\(or lcp prune --budgets\)"):  # the command itself keeps its flag
        lcp.prune(_small_net(), x, budgets=[0.7, 0.5])

"""timm support: 7 timm models of different families pruned through the CLI and rebuilt (the engine tests prune
and verify all 20 of ``TIMM_MODELS`` in-process), the ``lcp_<arch>`` timm entries, timm's script
path (``--model-kwargs pruned_dir=DIR``), feature extraction, and ``lcp check`` exit codes.

Fast on purpose (about 2-3 minutes on 2 CPU cores, one intra-op thread): every model runs at 3x64x64
(``--input-size 3 64 64``) on the session's tiny 3-class ImageFolder, from a random-weights ``--checkpoint``
(no baseline training) with ``--finetune-epochs 0``. Offline: ``HF_HUB_OFFLINE=1``.

timm's ``train.py`` and ``validate.py`` are not part of the installed timm package (they live in the
pytorch-image-models repository), so they cannot run here. ``test_timm_script_path`` follows what they do
with a model, step by step and with timm's own functions: ``--model lcp_<arch> --model-kwargs pruned_dir=DIR``
parsed by ``timm.utils.ParseKwargs``, ``timm.create_model`` with the arguments train.py passes, the data
config and transforms from the model's ``pretrained_cfg``, timm's dataset, loader and optimizer, a checkpoint
saved and loaded back the way ``--initial-checkpoint`` / ``validate.py --checkpoint`` do. The runner
``python -m lcp.models.timm_hub SCRIPT`` that registers the entries for such scripts runs a small script of that kind.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lcp
import lcp.cut.latency
import lcp.models.store
from tests.helpers import TIMM_MODELS, assert_one_line_error, lcp_cli

timm = pytest.importorskip("timm")

SIZE = (3, 64, 64)
_REAL_MEASURE = lcp.cut.latency.measure
CLASSES = 3  # the tiny folder's


# one intra-op thread (2 threads on a shared 2-core machine are much slower) and no hub access
pytestmark = pytest.mark.usefixtures("one_thread", "hub_offline")


def _quick_latency(model, input_size, **kw):
    """Stands in for ``lcp.cut.latency.measure`` (25 timed forwards of both models; tested elsewhere): one forward."""
    return _REAL_MEASURE(model, input_size, **{**kw, "warmup": 0, "repeats": 1})


class Runs:
    """``lcp prune`` of a timm model on the tiny folder, once per session; keeps the model the CLI saved."""

    def __init__(self, root: Path, data: Path, saver):
        self.root, self.data, self.saver = root, data, saver
        self.done: dict[str, tuple[Path, torch.nn.Module, tuple]] = {}

    def __call__(self, name: str) -> tuple[Path, torch.nn.Module, tuple]:
        if name not in self.done:
            ckpt = self.saver(name, CLASSES, self.root / f"{name}.pt")
            out = self.root / name
            saved = []
            real_write = lcp.models.store.write

            def spy(out_dir, model, spec):  # the pruned model exactly as the CLI writes it
                saved.append(model)
                return real_write(out_dir, model, spec)

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(lcp.models.store, "write", spy)
                mp.setattr("lcp.cut.latency.measure", _quick_latency)
                res = lcp_cli(
                    "prune",
                    "--model",
                    name,
                    "--data",
                    self.data,
                    "--checkpoint",
                    ckpt,
                    "--input-size",
                    *SIZE,
                    "--budget",
                    "0.5",
                    "--method",
                    "global",
                    "--finetune-epochs",
                    "0",
                    "--holdout",
                    "9",
                    "--batch-size",
                    "16",
                    "--recal-batches",
                    "2",
                    "--out",
                    out,
                    "--no-progress",
                )
            assert res[0] == 0, res[2][-2000:]
            self.done[name] = (out, saved[-1].eval(), res)
        return self.done[name]


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_folder, state_dict_saver) -> Runs:
    return Runs(tmp_path_factory.mktemp("timm_runs"), tiny_folder, state_dict_saver)


@pytest.fixture(scope="module")
def entries():
    import lcp.models.timm_hub as ts

    ts.register_all()
    return ts


def _x(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn((batch, *SIZE), generator=torch.Generator().manual_seed(seed))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------- CLI + load


#: families through the CLI: plain and SE residuals, inverted residuals with SE / hard-swish, ConvNeXt's LayerNorm,
#: ghost modules' concatenations; the other families of TIMM_MODELS are pruned and verified by the engine tests
TIMM_CLI_MODELS = [
    "resnet18",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "regnety_004",
    "ghostnet_100",
    "convnext_atto",
    "mixnet_s",
]
assert set(TIMM_CLI_MODELS) <= set(TIMM_MODELS)


@pytest.mark.parametrize("name", TIMM_CLI_MODELS)
def test_cli_prune_and_load_round_trip(runs, name):
    out, pruned, _ = runs(name)
    with open(out / "report.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert 0.47 <= float(row["macs_ratio"]) <= 0.5, row["macs_ratio"]  # aligned widths land within a step
    assert float(row["macs_pruned"]) < float(row["macs_base"])
    loaded = lcp.load(out)
    x = _x()
    with torch.no_grad():
        assert _same(loaded(x), pruned(x))
    assert lcp.count_macs(loaded, torch.zeros(1, *SIZE)) == int(float(row["macs_pruned"]))
    assert (out / "config.json").is_file()  # timm.create_model("local-dir:DIR")


@pytest.mark.parametrize("name", ["test_nfnet", "test_efficientnet_gn"])
def test_weight_standardized_and_group_norm_families_round_trip(runs, name):
    """NFNet (ScaledStdConv2d, folded into plain convs) and GroupNorm (whole groups removed) through the CLI."""
    test_cli_prune_and_load_round_trip(runs, name)
    out, pruned, _ = runs(name)
    kinds = {type(m).__name__ for m in pruned.modules()}
    assert not kinds & {"ScaledStdConv2d", "ScaledStdConv2dSame", "StdConv2d"}, kinds
    for m in pruned.modules():
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0


# --------------------------------------------------------------------------------------- timm's entry points


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "convnext_atto", "ghostnet_100"])
def test_timm_entry_rebuilds_the_pruned_model(runs, entries, name):
    out, pruned, _ = runs(name)
    x = _x(1)
    by_entry = timm.create_model(f"lcp_{name}", pruned_dir=str(out))
    by_dir = timm.create_model(f"local-dir:{out}")
    with torch.no_grad():
        want = pruned(x)
        for m in (by_entry, by_dir):
            assert m.training  # as timm.create_model returns models
            assert _same(m.eval()(x), want)
    assert by_entry.num_classes == CLASSES
    cfg = timm.data.resolve_data_config({}, model=by_entry)
    assert cfg["mean"] == timm.get_pretrained_cfg(name).mean
    # a new number of classes: a new classifier on the pruned features
    seven = timm.create_model(f"lcp_{name}", pruned_dir=str(out), num_classes=7)
    with torch.no_grad():
        assert seven.eval()(x).shape == (2, 7)


def test_timm_entry_refuses_another_arch_and_no_folder(runs, entries):
    out, _, _ = runs("resnet18")
    with pytest.raises(lcp.LcpError, match="not a resnet50"):
        timm.create_model("lcp_resnet50", pruned_dir=str(out))
    with pytest.raises(lcp.LcpError, match="pruned_dir"):
        timm.create_model("lcp_resnet18")


def test_own_class_keeps_forward_features_and_widths(runs, entries):
    out, pruned, _ = runs("resnet18")
    model = lcp.load(out)
    assert type(model).__name__ == "ResNet"
    x = _x(2)
    with torch.no_grad():
        feats = model.forward_features(x)
    assert model.num_features == feats.shape[1] == model.fc.in_features
    assert [fi["num_chs"] for fi in model.feature_info][1:] == [
        model.layer1[-1].conv2.out_channels,
        model.layer2[-1].conv2.out_channels,
        model.layer3[-1].conv2.out_channels,
        model.layer4[-1].conv2.out_channels,
    ]
    model.reset_classifier(5)  # timm's own method fits the pruned width
    with torch.no_grad():
        assert model(x).shape == (2, 5)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "convnext_atto"])
def test_features_only(runs, entries, name):
    """timm's own feature wrapper around the pruned model: its outputs are the pruned model's feature maps."""
    out, pruned, _ = runs(name)
    feat = timm.create_model(f"lcp_{name}", pruned_dir=str(out), features_only=True).eval()
    x = _x(3)
    modules = dict(pruned.named_modules())
    wanted = [pruned.feature_info[i]["module"] for i in feat.feature_info.out_indices]
    seen = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, o)) for n in wanted]
    with torch.no_grad():
        outs = feat(x)
        pruned(x)
    for h in hooks:
        h.remove()
    assert len(outs) == len(wanted)
    for o, n in zip(outs, wanted):
        assert _same(o, seen[n]), n
    assert [o.shape[1] for o in outs] == feat.feature_info.channels()
    two = timm.create_model(f"lcp_{name}", pruned_dir=str(out), features_only=True, out_indices=(1, 2))
    assert len(two.feature_info.channels()) == 2


def test_features_only_of_a_rewritten_graph_says_why(runs, entries):
    out, pruned, _ = runs("ghostnet_100")
    assert isinstance(pruned, torch.fx.GraphModule)
    with pytest.raises(lcp.LcpError, match="GraphModule"):
        timm.create_model("lcp_ghostnet_100", pruned_dir=str(out), features_only=True)


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet18"])
def test_timm_script_path(runs, entries, tiny_folder, tmp_path, name):
    """What timm's train.py / validate.py do with ``--model lcp_<arch> --model-kwargs pruned_dir=DIR``."""
    import timm.data
    import timm.optim
    import timm.utils

    out, pruned, _ = runs(name)
    parser = argparse.ArgumentParser()  # the options of train.py this path uses
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--model-kwargs", nargs="*", default={}, action=timm.utils.ParseKwargs)
    parser.add_argument("--input-size", default=None, nargs=3, type=int)
    args = parser.parse_args(
        ["--model", f"lcp_{name}", "--model-kwargs", f"pruned_dir={out}", "--input-size", *map(str, SIZE)]
    )
    assert args.model_kwargs == {"pruned_dir": str(out)}
    model = timm.create_model(
        args.model,
        pretrained=False,
        in_chans=3,
        num_classes=None,
        drop_rate=0.0,
        drop_path_rate=None,
        drop_block_rate=None,
        global_pool=None,
        bn_momentum=None,
        bn_eps=None,
        scriptable=False,
        checkpoint_path="",
        **args.model_kwargs,
    )
    assert model.num_classes == CLASSES
    data_config = timm.data.resolve_data_config(vars(args), model=model)
    assert tuple(data_config["input_size"]) == SIZE
    train_set = timm.data.create_dataset("", root=str(tiny_folder), split="train", is_training=True)
    loader = timm.data.create_loader(
        train_set,
        input_size=data_config["input_size"],
        batch_size=16,
        is_training=True,
        use_prefetcher=False,
        mean=data_config["mean"],
        std=data_config["std"],
        num_workers=0,
    )
    optimizer = timm.optim.create_optimizer_v2(model, opt="sgd", lr=0.01, weight_decay=2e-5)
    model.train()
    for step, (images, target) in enumerate(loader):
        loss = torch.nn.functional.cross_entropy(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        if step == 2:
            break
    ckpt = tmp_path / "checkpoint.pth.tar"  # train.py's CheckpointSaver keeps the state dict under 'state_dict'
    torch.save({"state_dict": model.state_dict(), "arch": args.model}, ckpt)
    # validate.py: the same entry, its checkpoint loaded by timm (like --checkpoint / --initial-checkpoint)
    again = timm.create_model(args.model, checkpoint_path=str(ckpt), **args.model_kwargs).eval()
    eval_set = timm.data.create_dataset("", root=str(tiny_folder), split="test", is_training=False)
    eval_loader = timm.data.create_loader(
        eval_set,
        input_size=data_config["input_size"],
        batch_size=32,
        is_training=False,
        use_prefetcher=False,
        mean=data_config["mean"],
        std=data_config["std"],
        crop_pct=data_config["crop_pct"],
        num_workers=0,
    )
    images, target = next(iter(eval_loader))
    with torch.no_grad():
        logits = again(images)
        assert _same(logits, model.eval()(images))
    (top1,) = timm.utils.accuracy(logits, target, topk=(1,))
    assert 0 <= float(top1) <= 100


def test_runner_registers_entries_for_a_script(runs, tmp_path):
    """``python -m lcp.models.timm_hub SCRIPT ARGS``: a script parsing --model-kwargs like train.py, in a new
    process."""
    out, pruned, _ = runs("resnet18")
    script = tmp_path / "my_validate.py"
    script.write_text(
        textwrap.dedent("""
        import argparse, timm, torch
        p = argparse.ArgumentParser()
        p.add_argument("--model")
        p.add_argument("--model-kwargs", nargs="*", default={}, action=timm.utils.ParseKwargs)
        a = p.parse_args()
        m = timm.create_model(a.model, pretrained=True, num_classes=None, **a.model_kwargs).eval()
        x = torch.load(a.model_kwargs["pruned_dir"] + "/x.pt")
        with torch.no_grad():
            print("sum", float(m(x).double().sum()))
    """)
    )
    x = _x(4)
    torch.save(x, out / "x.pt")
    with torch.no_grad():
        want = float(pruned(x).double().sum())
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lcp.models.timm_hub",
            str(script),
            "--model",
            "lcp_resnet18",
            "--model-kwargs",
            f"pruned_dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    (out / "x.pt").unlink()
    assert done.returncode == 0, done.stderr[-2000:]
    got = float(done.stdout.split("sum")[-1])
    assert abs(got - want) <= 1e-4 * max(1.0, abs(want))


# ------------------------------------------------------------------------------------------------ lcp check


def test_check_ok_exit_0():
    code, out, err = lcp_cli("check", "--model", "resnet18", "--input-size", *SIZE)
    assert code == 0, err
    assert out.startswith("resnet18: OK, pruned to ")
    assert "verified: masked equivalence" in out and "prunable:" in out
    assert "frozen" not in out  # resnet18 has no frozen ops: "frozen by the ops below" named none
    assert "depth: 8 residual branches can also be removed whole (--depth)" in out  # timm's BasicBlocks


def test_check_refused_exit_2_with_reason():
    res = lcp_cli("check", "--model", "resnet18", "--input-size", *SIZE, "--ignore", "*")
    code, out, err = res
    line = assert_one_line_error(res, "resnet18 cannot be pruned to 0.5 safely: nothing")
    assert code == 2 and line.startswith("lcp: error: resnet18 cannot be pruned to 0.5 safely: nothing")
    assert "REFUSED (nothing in this model can be pruned safely" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lcp: error: resnet18 cannot be pruned to 0.5 safely: nothing")
    assert "matched an --ignore pattern" in out  # what froze it, and where


def test_check_refuses_an_ignore_glob_that_matches_nothing():
    """Bad input (a typo in a module name), not a model property: one line, exit 2, as lcp prune refuses it."""
    res = lcp_cli("check", "--model", "resnet18", "--input-size", *SIZE, "--ignore", "layer9.*")
    line = assert_one_line_error(res, "--ignore 'layer9.*' matches no conv or linear module of ResNet")
    assert res.code == 2 and line.startswith("lcp: error: --ignore 'layer9.*' matches no conv")
    assert res.out == ""  # no report of a check that did not run


def test_check_reports_frozen_ops_with_modules():
    code, out, _ = lcp_cli("check", "--model", "convnext_atto", "--input-size", *SIZE)
    assert code == 0
    assert "x layer_norm: op layer_norm is not modelled (at stem.1, stages.0.blocks.0.norm" in out
    assert "--ignore 'GLOB'" in out


@pytest.mark.parametrize("name", ["resnet20", "tv:resnet18", "ssl_resnet18"])  # zoo, torchvision, timm alias
def test_check_names(name):
    size = () if name == "resnet20" else ("--input-size", *SIZE)
    code, out, err = lcp_cli("check", "--model", name, *size)
    assert code == 0, err
    assert ": OK, pruned to " in out


def test_check_offline_hub_name_is_one_line():
    res = lcp_cli("check", "--model", "hf-hub:timm/not-a-real-model-lcp-test")
    assert_one_line_error(res, "not-a-real-model-lcp-test", "offline?")


def test_check_api_budget_out_of_reach():
    from lcp.cut.diagnose import check

    model = timm.create_model("resnet18", num_classes=CLASSES)
    rep = check(model, torch.zeros(1, *SIZE), budget=0.01)
    assert rep.status == "refused" and rep.lowest_ratio is not None
    assert any("lowest reachable" in line for line in rep.lines())


def test_cnn_like_rule():
    from lcp.models.timm_support import is_cnn_like

    with torch.device("meta"):
        assert is_cnn_like(timm.create_model("resnest14d")) == (True, "")  # SplitAttn is a conv gate
        assert is_cnn_like(timm.create_model("convnext_atto")) == (True, "")
        ok, why = is_cnn_like(timm.create_model("vit_tiny_patch16_224"))
        assert not ok and "Attention" in why
        assert not is_cnn_like(timm.create_model("mixer_s16_224"))[0]


def test_check_pretrained_offline_is_one_line():
    res = lcp_cli("check", "--model", "resnet18", "--pretrained", "--input-size", *SIZE)
    assert_one_line_error(res, "could not download pretrained weights for resnet18")


def test_imagenet_style_data_uses_timm_transforms(tiny_folder):
    """Above 64x64 an ImageFolder is read through timm's eval transform of the model's pretrained_cfg."""
    from lcp.models.factory import model_info
    from lcp.run.load import timm_eval_transform
    from lcp.training.data import load_data

    info = model_info("regnetx_002")
    tf = timm_eval_transform(info, (3, 96, 96))
    steps = [type(t).__name__ for t in tf.transforms]
    assert steps[:2] == ["Resize", "CenterCrop"], steps
    assert tf.transforms[0].size == int(96 / info.crop_pct) and tf.transforms[1].size == (96, 96)
    bundle = load_data(tiny_folder, input_size=(3, 96, 96), mean=info.mean, std=info.std, holdout=9, transform=tf)
    assert tuple(bundle.train_x.shape[1:]) == (3, 96, 96) and bundle.mean == info.mean


def test_check_suggests_ignore_patterns_for_a_failing_block(monkeypatch):
    """A model that fails after the cut gets the --ignore patterns that make it prune (here: a fake bug in b.0)."""
    import importlib

    lc = importlib.import_module("lcp.cut.diagnose")  # the module, even if lcp exports a function named check

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            conv = lambda: torch.nn.Conv2d(16, 16, 3, padding=1)  # noqa: E731
            self.a = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU()
            )
            self.b = torch.nn.Sequential(conv(), torch.nn.ReLU(), conv())
            self.c = conv()
            self.head = torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.c(self.b(self.a(x))).mean((2, 3)))

    real = lc.train_step

    def buggy(pruned, original, inputs):
        if pruned.b[0].out_channels < 16:
            raise IndexError("fake engine bug")
        return real(pruned, original, inputs)

    monkeypatch.setattr(lc, "train_step", buggy)
    rep = lc.check(Net(), torch.zeros(1, 3, 16, 16), suggest=True)
    assert rep.status == "error" and rep.reason.startswith("IndexError: fake engine bug")
    assert rep.suggestion == ["b.0"]  # a conv: "b.0.*" would match nothing, and lcp prune refuses such a glob
    assert any("--ignore 'b.0'" in line for line in rep.lines())
    fixed = lc.check(Net(), torch.zeros(1, 3, 16, 16), ignore=rep.suggestion)
    assert fixed.ok

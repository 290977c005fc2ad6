"""Tests of lcp.training.data (loading, caching, splits, batches) and lcp.training.train (evaluate, BN
recalibration, fine-tuning)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lcp.training.data as data_mod
import lcp.training.images as images_mod
from lcp.errors import LcpError
from lcp.training.data import DataBundle, load_data
from lcp.training.train import evaluate, finetune, load_checkpoint, recalibrate_bn, train_baseline
from tests.helpers import channel_image, make_image_folder

SIZE = (3, 8, 8)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty lcp cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LCP_CACHE", str(cache))
    return cache


_image = channel_image


def make_folder(root: Path, per_class: int = 20, test_per_class: int = 4, classes: int = 3, seed: int = 0) -> Path:
    """A small ImageFolder of 8x8 ``channel_image``s (PNG and JPEG), plus one larger image that must be resized."""
    make_image_folder(root, classes, per_class, test_per_class, seed, image=_image, first_ext="png", jpeg_quality=None)
    _image(0, np.random.default_rng(seed + 1000), (12, 10)).save(root / "train" / "class0" / "big.png")
    return root


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "ds")


# ---------------------------------------------------------------------------------------------- lcp.training.data


def test_load_folder_splits(folder: Path) -> None:
    b = load_data(folder, input_size=SIZE, holdout=9, seed=1)
    assert b.classes == ["class0", "class1", "class2"] and b.num_classes == 3
    assert b.train_x.shape == (61 - 9, *SIZE) and b.train_x.dtype == torch.uint8
    assert b.holdout_x.shape == (9, *SIZE) and b.test_x.shape == (12, *SIZE)
    assert b.train_y.dtype == torch.int64 and len(b.train_y) == len(b.train_x)
    assert torch.bincount(b.holdout_y, minlength=3).tolist() == [3, 3, 3]  # stratified
    assert b.train_idx is not None and b.holdout_idx is not None
    assert not set(b.train_idx.tolist()) & set(b.holdout_idx.tolist())
    assert sorted(b.train_idx.tolist() + b.holdout_idx.tolist()) == list(range(61))
    # dominant channel = class, so the cached pixels carry the labels
    assert (b.test_x.float().mean((2, 3)).argmax(1) == b.test_y).all()
    again = load_data(folder, input_size=SIZE, holdout=9, seed=1)
    assert torch.equal(again.holdout_idx, b.holdout_idx)
    other = load_data(folder, input_size=SIZE, holdout=9, seed=2)
    assert not torch.equal(other.holdout_idx, b.holdout_idx)
    assert "train=52" in repr(b)


def test_cache_hit_skips_decoding(folder: Path, _cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_data(folder, input_size=SIZE, holdout=6)
    assert first.cache_dir is not None and (first.cache_dir / "meta.json").exists()
    assert first.cache_dir.parent == _cache / "data"
    names = sorted(p.name for p in first.cache_dir.iterdir())  # no temporary files left behind
    assert names == ["meta.json", "test_x.npy", "test_y.npy", "train_x.npy", "train_y.npy"]

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again despite the cache")

    decode_all = images_mod.decode_all
    monkeypatch.setattr(images_mod, "decode_all", boom)
    second = load_data(folder, input_size=SIZE, holdout=6)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    # a changed folder is a different cache entry
    _image(1, np.random.default_rng(5)).save(folder / "train" / "class1" / "new.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load_data(folder, input_size=SIZE, holdout=6)
    monkeypatch.setattr(images_mod, "decode_all", decode_all)
    third = load_data(folder, input_size=SIZE, holdout=6)
    assert len(third.train_x) == len(first.train_x) + 1
    assert [p.name for p in (_cache / "data").iterdir()] == [third.cache_dir.name]  # the stale entry is gone


def test_the_test_split_alone_has_train_s_classes_and_its_own_cache_entry(tmp_path: Path, _cache: Path) -> None:
    """lcp eval reads test/ only: labels as in a full load (a class missing from test/ keeps the others' labels),
    a class train/ lacks refused, and the full load's cache entry stays."""
    import shutil

    root = make_folder(tmp_path / "ds", per_class=3, test_per_class=2, classes=3)
    shutil.rmtree(root / "test" / "class1")
    full = load_data(root, input_size=SIZE, holdout=0)
    alone = load_data(root, input_size=SIZE, holdout=0, test_only=True)
    assert alone.classes == full.classes == ["class0", "class1", "class2"] and len(alone.train_x) == 0
    assert torch.equal(alone.test_y, full.test_y) and torch.equal(alone.test_x, full.test_x)
    assert full.cache_dir.is_dir() and alone.cache_dir.is_dir() and alone.cache_dir != full.cache_dir
    shutil.rmtree(root / "train")  # no train/: the classes are test/'s own
    assert load_data(root, input_size=SIZE, holdout=0, test_only=True).classes == ["class0", "class2"]
    make_folder(tmp_path / "ds2", per_class=3, test_per_class=2, classes=2)
    (tmp_path / "ds2" / "test" / "class1").rename(tmp_path / "ds2" / "test" / "extra")
    with pytest.raises(LcpError, match="classes not in"):
        load_data(tmp_path / "ds2", input_size=SIZE, holdout=0, test_only=True)


def test_val_folder_and_resize(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", per_class=3, test_per_class=2, classes=2)
    (root / "test").rename(root / "val")
    b = load_data(root, input_size=(3, 6, 6), holdout=0)
    assert b.train_x.shape == (7, 3, 6, 6) and b.test_x.shape == (4, 3, 6, 6) and len(b.holdout_x) == 0
    with pytest.raises(LcpError, match="holdout"):
        b.loader("holdout", 4)


def test_transform_hook_drops_tensor_steps(folder: Path) -> None:
    import torchvision.transforms as T

    tf = T.Compose([T.Resize(7), T.CenterCrop(6), T.ToTensor(), T.Normalize((0.5,) * 3, (0.2,) * 3)])  # timm-style
    b = load_data(folder, input_size=(3, 6, 6), holdout=3, transform=tf)
    assert b.train_x.shape[1:] == (3, 6, 6) and b.train_x.dtype == torch.uint8
    plain = load_data(folder, input_size=(3, 6, 6), holdout=3)
    assert plain.cache_dir != b.cache_dir  # the transform is part of the cache key


def _as_is(image: object) -> object:
    return image


def test_a_transform_that_does_not_name_itself_is_never_cached(folder: Path, _cache: Path) -> None:
    """Every Lambda prints as ``Lambda()`` (two of them would share an entry) and a function prints its address
    (a new entry per process): such a transform is decoded every time, never served from the cache."""
    import torchvision.transforms as T

    fit = T.Resize((8, 8))
    same = load_data(folder, input_size=SIZE, holdout=0, transform=T.Compose([fit, T.Lambda(lambda im: im)]))
    invert = T.Lambda(lambda im: im.point(lambda v: 255 - v))
    inverted = load_data(folder, input_size=SIZE, holdout=0, transform=T.Compose([fit, invert]))
    assert same.cache_dir is None and inverted.cache_dir is None
    assert load_data(folder, input_size=SIZE, holdout=0, transform=T.Compose([fit, _as_is])).cache_dir is None
    assert torch.equal(inverted.test_x, 255 - same.test_x)
    assert not (_cache / "data").is_dir() or not any((_cache / "data").iterdir())


def test_the_test_split_alone_needs_no_holdout(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", per_class=3, test_per_class=2, classes=2)
    alone = load_data(root, input_size=SIZE, test_only=True)  # the default holdout: nothing to carve it from
    assert len(alone.test_x) == 4 and len(alone.train_x) == len(alone.holdout_x) == 0


def test_grayscale_jpegs_decode_as_pil_converts_them(tmp_path: Path) -> None:
    """torchvision's gray conversion differs from PIL's convert("L"): one decoder for every file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(str(p))
    got = images_mod.decode_all(paths, (1, 8, 8), None)
    pil = np.stack([np.asarray(Image.open(p).convert("L"))[None] for p in paths])
    assert np.array_equal(got, pil)


def test_loader_normalize_augment_determinism(folder: Path) -> None:
    b = load_data(folder, input_size=SIZE, holdout=6, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    x, y = next(iter(b.loader("test", 5)))
    assert x.shape == (5, *SIZE) and x.dtype == torch.float32 and y.shape == (5,)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    assert torch.allclose(x, (b.test_x[:5].float() / 255 - mean) / std, atol=1e-5)

    ld = b.loader("train", 16, shuffle=True, augment=True, seed=3)
    assert len(ld) == 4 and [len(yb) for _, yb in ld] == [16, 16, 16, 7]
    e0 = [xb for xb, _ in ld]
    assert all(xb.shape[1:] == SIZE for xb in e0)
    assert all(torch.equal(a, c) for a, c in zip(e0, [xb for xb, _ in ld]))  # same epoch: same batches
    e1 = [xb for xb, _ in ld.set_epoch(1)]
    assert not torch.equal(e0[0], e1[0])
    fresh = [xb for xb, _ in b.loader("train", 16, shuffle=True, augment=True, seed=3, epoch=1)]
    assert all(torch.equal(a, c) for a, c in zip(e1, fresh))
    assert len(b.loader("train", 16, drop_last=True)) == 3

    # the crop keeps image content: an augmented batch holds shifted/flipped copies, padded with zeros
    aug = data_mod.augment_batch(b.test_x[:4], torch.Generator().manual_seed(0))
    assert aug.shape == (4, *SIZE) and aug.dtype == torch.uint8
    assert data_mod.augment_batch(b.test_x[:4], torch.Generator().manual_seed(0)).equal(aug)
    h, w = SIZE[1:]
    padded = torch.nn.functional.pad(b.test_x[:4], (4, 4, 4, 4))
    windows = [
        {(oy, ox, f) for oy in range(9) for ox in range(9) for f in (False, True)
         if torch.equal(aug[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, oy : oy + h, ox : ox + w]))}
        for i in range(4)
    ]  # fmt: skip
    assert all(windows), windows  # each image is one window of its zero-padded original, flipped or not
    assert len({min(s) for s in windows}) > 1  # and not the same window for every image

    limited = b.loader("test", 4, limit=5)
    assert sum(len(yb) for _, yb in limited) == 5
    assert torch.equal(next(iter(limited))[1], next(iter(b.loader("test", 4, limit=5, seed=9)))[1])
    with pytest.raises(LcpError, match="unknown data split"):
        b.loader("validation", 4)


def test_unlabeled_flat_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "flat"
    (root / "sub").mkdir(parents=True)
    for i in range(7):
        _image(i % 3, rng).save(root / ("sub" if i % 2 else ".") / f"{i}.png")
    (root / "notes.txt").write_text("not an image")
    b = load_data(root, input_size=SIZE, holdout=2, labeled=False)
    assert len(b.train_x) == 5 and len(b.holdout_x) == 2 and len(b.test_x) == 0
    assert b.classes == [] and (b.train_y == -1).all() and (b.holdout_y == -1).all()
    with pytest.raises(LcpError, match="test split"):
        b.loader("test", 4)
    with pytest.raises(LcpError, match="unlabeled"):
        evaluate(nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), b.loader("train", 4))


def test_unlabeled_imagefolder_hides_train_labels(folder: Path) -> None:
    b = load_data(folder, input_size=SIZE, holdout=3, labeled=False)
    assert (b.train_y == -1).all() and (b.test_y >= 0).all() and b.num_classes == 3


def test_data_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LcpError, match="does not exist"):
        load_data(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LcpError, match="no train/"):
        load_data(tmp_path / "empty")
    with pytest.raises(LcpError, match="no images"):
        load_data(tmp_path / "empty", labeled=False)
    (tmp_path / "notest" / "train" / "a").mkdir(parents=True)
    _image(0, np.random.default_rng(0)).save(tmp_path / "notest" / "train" / "a" / "x.png")
    with pytest.raises(LcpError, match="no test/ or val/"):
        load_data(tmp_path / "notest", input_size=SIZE)
    (tmp_path / "noclass" / "train").mkdir(parents=True)
    (tmp_path / "noclass" / "test").mkdir()
    _image(0, np.random.default_rng(0)).save(tmp_path / "noclass" / "train" / "x.png")
    with pytest.raises(LcpError, match="labeled=False"):
        load_data(tmp_path / "noclass")
    bad = make_folder(tmp_path / "bad", per_class=2, test_per_class=1, classes=2)
    (bad / "train" / "class1" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(LcpError, match="broken.jpg"):
        load_data(bad, input_size=SIZE, holdout=1)
    ok = make_folder(tmp_path / "ok", per_class=2, test_per_class=1, classes=2)
    with pytest.raises(LcpError, match="holdout"):
        load_data(ok, input_size=SIZE, holdout=5)
    with pytest.raises(LcpError, match="input_size"):
        load_data(ok, input_size=(4, 8, 8))
    with pytest.raises(LcpError, match="mean and std"):
        load_data(ok, input_size=SIZE, mean=(0.5,), holdout=1)


def test_cifar10_offline_without_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no network")

    monkeypatch.setenv("LCP_DATA", str(tmp_path))  # no cifar10/ inside
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(LcpError, match="CIFAR-10 not found: set LCP_DATA"):
        load_data("cifar10")


@pytest.mark.skipif(
    not (os.environ.get("LCP_DATA") and (Path(os.environ["LCP_DATA"]) / "cifar10").is_dir()),
    reason="needs $LCP_DATA/cifar10 (source ../shared/offline-env.sh)",
)
def test_cifar10_sizes() -> None:
    b = load_data("cifar10")
    assert (len(b.train_x), len(b.holdout_x), len(b.test_x)) == (45000, 5000, 10000)
    assert b.num_classes == 10 and b.classes[0] == "airplane" and b.train_x.shape[1:] == (3, 32, 32)
    assert torch.bincount(b.holdout_y).tolist() == [500] * 10


# --------------------------------------------------------------------------------------------- lcp.training.train


class TinyNet(nn.Module):
    """conv-BN-ReLU-pool-dropout-linear; ``poison`` makes its outputs NaN."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, classes))
        self.poison = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        return out * float("nan") if self.poison else out


@pytest.fixture()
def bundle(tmp_path: Path) -> DataBundle:
    return load_data(make_folder(tmp_path / "toy", per_class=40, test_per_class=10), input_size=SIZE, holdout=12)


def _net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def test_evaluate(bundle: DataBundle) -> None:
    class Const(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(x), 3).index_fill_(1, torch.tensor([1]), 1e-9)

    res = evaluate(Const(), bundle.loader("test", 7))
    assert res["n"] == 30 and res["top1"] == pytest.approx(100 / 3) and res["loss"] == pytest.approx(np.log(3))
    net = _net().train()
    evaluate(net, bundle.loader("test", 7))
    assert net.training and net.head[2].training  # modes restored


def test_recalibrate_bn(bundle: DataBundle) -> None:
    seen_modes: list[bool] = []
    net = _net().eval()
    net.head[2].register_forward_hook(lambda m, i, o: seen_modes.append(m.training))
    bn = net.features[1]
    bn.momentum = 0.3
    loader = bundle.loader("train", 32)
    recalibrate_bn(net, loader, batches=2)
    assert seen_modes == [False, False]  # dropout stayed in eval mode
    assert bn.momentum == 0.3 and not net.training and not bn.training
    assert int(bn.num_batches_tracked) == 2
    with torch.no_grad():
        acts = [net.features[0](xb) for xb, _ in list(loader)[:2]]
    expect = torch.stack([a.mean((0, 2, 3)) for a in acts]).mean(0)
    assert torch.allclose(bn.running_mean, expect, atol=1e-5)
    linear = nn.Linear(2, 2)
    before = {k: v.clone() for k, v in linear.state_dict().items()}
    assert recalibrate_bn(linear, loader) is linear  # no BN: a no-op
    assert all(torch.equal(before[k], v) for k, v in linear.state_dict().items())


def test_recalibrate_bn_skips_a_short_last_batch_and_keeps_the_stats_it_cannot_replace(bundle: DataBundle) -> None:
    """A last batch of one image would fail BatchNorm1d (no variance) and count as much as a full batch; no
    batch at all (or batches=0) is one error that leaves the old statistics in place."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.BatchNorm1d(4))
    x = torch.randn(9, *SIZE)
    batches = [(x[:4], None), (x[4:8], None), (x[8:], None)]
    recalibrate_bn(net, batches, batches=3)
    bn = net[2]
    assert int(bn.num_batches_tracked) == 2
    with torch.no_grad():
        h = net[1](net[0](x[:8]))
    assert torch.allclose(bn.running_mean, (h[:4].mean(0) + h[4:].mean(0)) / 2, atol=1e-5)
    old = {k: v.clone() for k, v in bn.state_dict().items()}
    for loader, n in (([], 5), (batches, 0)):
        with pytest.raises(LcpError):
            recalibrate_bn(net, loader, batches=n)
        assert all(torch.equal(old[k], v) for k, v in bn.state_dict().items())


def test_finetune_lowers_loss_and_baseline(bundle: DataBundle, capsys: pytest.CaptureFixture[str]) -> None:
    net = _net()
    before = evaluate(net, bundle.loader("holdout", 64))["loss"]
    res = finetune(net, bundle, epochs=2, lr=0.05, batch_size=16, progress=False)
    after = evaluate(net, bundle.loader("holdout", 64))["loss"]
    assert after < 0.8 * before
    assert [r["epoch"] for r in res["history"]] == [1, 2] and res["steps"] == 2 * (109 // 16)
    assert res["history"][1]["lr"] < 0.05 * 0.2  # cosine near its end

    threads = torch.get_num_threads()
    base = train_baseline(
        _net(1), bundle, epochs=1, lr=0.1, batch_size=32, eval_loader=bundle.loader("test", 64), num_threads=1
    )
    assert np.isfinite(base["history"][0]["loss"]) and "val_top1" in base["history"][0]
    assert "train epoch 1/1: loss" in capsys.readouterr().err and torch.get_num_threads() == threads


def test_resume_matches_uninterrupted(bundle: DataBundle, tmp_path: Path) -> None:
    kw = dict(epochs=2, lr=0.05, batch_size=16, progress=False, seed=4)
    start = _net(2)
    full = copy.deepcopy(start)
    finetune(full, bundle, ckpt_path=tmp_path / "full.safetensors", **kw)

    class Crash(Exception):
        pass

    def crash(epoch: int, record: dict) -> None:
        raise Crash

    ckpt = tmp_path / "run.safetensors"
    with pytest.raises(Crash):
        finetune(copy.deepcopy(start), bundle, ckpt_path=ckpt, on_epoch_end=crash, **kw)
    assert load_checkpoint(ckpt, _net(9))["epoch"] == 1
    resumed = _net(7)  # other weights: the checkpoint replaces them
    res = finetune(resumed, bundle, ckpt_path=ckpt, resume=True, **kw)
    assert res["resumed_from"] == 1 and len(res["history"]) == 2
    first, second = (r["seconds"] for r in res["history"])  # since the run began, across the resume
    assert 0 < first < second and second - first >= res["seconds"] * 0.5
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(LcpError, match="lr=0.05"):
        finetune(_net(), bundle, ckpt_path=ckpt, resume=True, **{**kw, "lr": 0.1})
    with open(ckpt, "rb") as f:  # safetensors: 8-byte header length, then JSON; no pickle opcodes
        head = f.read(9)
    assert head[8:9] == b"{"


def test_resume_refuses_a_checkpoint_made_with_another_distillation(bundle: DataBundle, tmp_path: Path) -> None:
    """--kd-weight (and the teacher, and augmentation) are settings of the checkpoint like the learning rate."""
    kw = dict(epochs=2, lr=0.05, batch_size=16, progress=False, seed=4, teacher=_net(3).eval(), kd_alpha=0.9)

    def crash(epoch: int, record: dict) -> None:
        raise KeyboardInterrupt

    ckpt = tmp_path / "kd.safetensors"
    with pytest.raises(KeyboardInterrupt):
        finetune(_net(2), bundle, ckpt_path=ckpt, on_epoch_end=crash, **kw)
    with pytest.raises(LcpError, match=r"kd_alpha=0.9 \(now 0.5\)"):
        finetune(_net(2), bundle, ckpt_path=ckpt, resume=True, **{**kw, "kd_alpha": 0.5})
    with pytest.raises(LcpError, match=r"teacher=True \(now False\)"):
        finetune(_net(2), bundle, ckpt_path=ckpt, resume=True, **{**kw, "teacher": None})
    assert finetune(_net(2), bundle, ckpt_path=ckpt, resume=True, **kw)["resumed_from"] == 1


def test_nan_stops_and_keeps_checkpoint(bundle: DataBundle, tmp_path: Path) -> None:
    net = _net()
    ckpt = tmp_path / "nan.safetensors"

    def poison(epoch: int, record: dict) -> None:
        net.poison = True

    msg = r"loss became NaN at epoch 2 step 1; the last good checkpoint is kept at .*nan\.safetensors; lower --lr"
    with pytest.raises(LcpError, match=msg):
        finetune(net, bundle, epochs=3, lr=0.05, batch_size=16, ckpt_path=ckpt, progress=False, on_epoch_end=poison)
    assert load_checkpoint(ckpt, _net())["epoch"] == 1
    with pytest.raises(LcpError, match="no checkpoint was written yet"):
        finetune(net, bundle, epochs=1, batch_size=16, ckpt_path=tmp_path / "x.safetensors", progress=False)


def test_on_step_end_sees_every_optimizer_step(bundle: DataBundle) -> None:
    """``on_step_end(model)`` runs after each optimizer step with the updated weights (what a moving average of
    the weights needs), and the last call sees the weights finetune returns."""
    net, seen = _net(), []
    res = finetune(
        net,
        bundle,
        epochs=2,
        batch_size=16,
        progress=False,
        on_step_end=lambda m: seen.append(m.head[3].weight.clone()),
    )
    assert len(seen) == res["steps"] > 2
    assert not torch.equal(seen[0], seen[1]) and torch.equal(seen[-1], net.head[3].weight)


def _layouts_seen(net: nn.Module) -> list[bool]:
    """Whether each training forward's input reached the first conv channels-last."""
    seen: list[bool] = []

    def hook(m: nn.Module, args: tuple) -> None:
        if m.training:
            seen.append(not args[0].is_contiguous() and args[0].is_contiguous(memory_format=torch.channels_last))

    net.features[0].register_forward_pre_hook(hook)
    return seen


def test_channels_last_training_takes_the_same_steps_as_the_default_layout(bundle: DataBundle) -> None:
    """On the CPU training runs channels-last by default (faster): model and teacher are converted while it runs,
    the weights differ from the default layout's by rounding only, and both come back in the default layout."""
    kw = dict(epochs=2, lr=0.05, batch_size=16, progress=False, seed=1)
    runs = {}
    for cl in (None, False):
        net, teacher = _net(2), _net(3).eval()
        seen, weights, taught = _layouts_seen(net), [], []
        teacher.features[0].register_forward_pre_hook(
            lambda m, a, taught=taught: taught.append(
                not a[0].is_contiguous() and a[0].is_contiguous(memory_format=torch.channels_last)
            )
        )
        res = finetune(
            net,
            bundle,
            teacher=teacher,
            channels_last=cl,
            on_step_end=lambda m, weights=weights: weights.append(
                m.features[0].weight.is_contiguous(memory_format=torch.channels_last)
            ),
            **kw,
        )
        assert res["channels_last"] is (cl is None)
        assert seen and set(seen) == {cl is None} and set(weights) == {cl is None}
        assert taught[-1] is (cl is None)  # the teacher's last pass, a training step's
        for m in (net, teacher):
            assert all(p.is_contiguous() for p in m.parameters())
        runs[cl] = net.state_dict()
    for k, v in runs[None].items():
        assert torch.allclose(v.float(), runs[False][k].float(), rtol=1e-4, atol=1e-5), k


class Viewing(TinyNet):
    """Flattens its feature maps with ``view``, which channels-last tensors refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8 * SIZE[1] * SIZE[2], 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(h.view(len(h), -1))


def test_a_teacher_that_cannot_take_channels_last_keeps_the_run_in_the_default_layout(bundle: DataBundle) -> None:
    torch.manual_seed(5)
    teacher = Viewing().eval()
    nets = []
    for cl in (None, False):
        net = _net(2)
        res = finetune(net, bundle, epochs=1, batch_size=16, progress=False, teacher=teacher, channels_last=cl)
        assert not res["channels_last"]
        nets.append(net)
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k


def test_a_resumed_run_keeps_its_checkpoint_s_layout(bundle: DataBundle, tmp_path: Path) -> None:
    """A checkpoint made in NCHW (as every checkpoint before channels-last training) resumes in NCHW, with the
    weights of an uninterrupted NCHW run."""
    kw = dict(epochs=2, lr=0.05, batch_size=16, progress=False, seed=4)
    full = _net(2)
    finetune(full, bundle, channels_last=False, **kw)

    def crash(epoch: int, record: dict) -> None:
        raise KeyboardInterrupt

    ckpt = tmp_path / "nchw.safetensors"
    with pytest.raises(KeyboardInterrupt):
        finetune(_net(2), bundle, ckpt_path=ckpt, on_epoch_end=crash, channels_last=False, **kw)
    resumed = _net(7)
    res = finetune(resumed, bundle, ckpt_path=ckpt, resume=True, **kw)  # the default would be channels-last
    assert res["resumed_from"] == 1 and not res["channels_last"]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_model_that_cannot_take_channels_last_trains_in_the_default_layout(bundle: DataBundle) -> None:
    """A forward that views feature maps as flat rows fails on channels-last tensors: the first batch's probe
    sees it and the run keeps the default layout, with the same weights as when asked for it."""

    nets = []
    for cl in (True, False):
        torch.manual_seed(0)
        net = Viewing()
        seen = _layouts_seen(net)
        finetune(net, bundle, epochs=1, batch_size=16, progress=False, channels_last=cl)
        assert seen and not any(seen)
        nets.append(net)
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k


def test_the_searchs_inference_runs_channels_last_only_where_the_model_gives_the_same_outputs() -> None:
    """The search's candidates are evaluated channels-last on a CPU; a network whose code refuses channels-last
    feature maps (a ``view`` of one) would fail every candidate, so the unpruned network is probed first."""
    from lcp.training.evaluate import prefers_channels_last

    x = [torch.randn(6, 3, *SIZE[1:])]
    cpu = torch.device("cpu")
    plain, viewing = _net(), Viewing()
    plain.train()
    assert prefers_channels_last(cpu, plain, x) and plain.training  # the probe leaves its mode as it was
    assert next(plain.parameters()).is_contiguous()  # ... and the model itself in its layout
    assert not prefers_channels_last(cpu, viewing, x)
    assert not prefers_channels_last(cpu, plain, [x[0].flatten(1)])  # not images
    assert not prefers_channels_last(torch.device("meta"), plain, x)  # not a CPU


def test_distillation_on_unlabeled_data(folder: Path) -> None:
    b = load_data(folder, input_size=SIZE, holdout=3, labeled=False)
    res = finetune(_net(), b, epochs=1, batch_size=16, teacher=_net(3), progress=False)
    assert res["history"][0]["top1"] is None and np.isfinite(res["history"][0]["loss"])
    with pytest.raises(LcpError, match="labels or a teacher"):
        finetune(_net(), b, epochs=1, batch_size=16, progress=False)


def test_cifar10_downloaded_by_torchvision_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without $LCP_DATA, cifar10 comes from torchvision's download (stubbed here: offline); a local variable
    shadowed lcp's cache folder and this raised a TypeError."""

    def fake(size, tf):
        arrays = {f"{s}_x": np.zeros((20, 3, 32, 32), np.uint8) for s in ("train", "test")}
        arrays.update({f"{s}_y": np.arange(20) % 10 for s in ("train", "test")})
        return arrays, [str(i) for i in range(10)]

    monkeypatch.delenv("LCP_DATA", raising=False)
    monkeypatch.setenv("LCP_CACHE", str(tmp_path))
    monkeypatch.setattr(data_mod, "_load_torchvision_cifar10", fake)
    bundle = data_mod.load_data("cifar10", holdout=10)
    assert bundle.num_classes == 10 and len(bundle.holdout_x) == 10

"""CLI features on the tiny folder: ``lcp bench``, ``lcp search`` then ``lcp prune --transforms``, the baseline
trained when no weights exist, ``--kd`` and ``lcp train --resume``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lcp
import lcp.training.train
from tests.helpers import assert_one_line_error, lcp_cli, read_csv, read_report, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")

BENCH_COLUMNS = [
    *("name", "model", "runtime", "batch", "median_ms", "p10_ms", "p90_ms", "images_per_s", "peak_mb"),
    *("speedup", "speedup_error"),
]


@pytest.fixture(scope="module")
def pruned(tiny_folder: Path, resnet20_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A global-ranking run of the 3-class ResNet-20 at 50% of the MACs (no fine-tuning)."""
    out = tmp_path_factory.mktemp("pruned") / "run"
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out))
    assert res.code == 0, res.err
    return out


# ------------------------------------------------------------------------------------------------------ bench


def test_bench_writes_a_row_per_model_and_batch(pruned: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "bench.csv"
    res = lcp_cli(
        "bench",
        pruned,
        "--batch",
        "1",
        "2",
        "--repeats",
        "2",
        "--no-compile",
        "--no-onnx",
        "--threads",
        "1",
        "--out",
        csv_path,
    )
    assert res.code == 0, res.err
    assert f"written {csv_path}" in res.out and "images_per_s" in res.out  # the table, then where it went
    rows = read_csv(csv_path)
    assert list(rows[0]) == BENCH_COLUMNS
    assert [(r["name"], r["model"], r["runtime"], r["batch"]) for r in rows] == [
        ("resnet20", m, "eager", b) for m in ("original", "pruned") for b in ("1", "2")
    ]
    for r in rows:
        med, p10, p90 = float(r["median_ms"]), float(r["p10_ms"]), float(r["p90_ms"])
        assert 0 < p10 <= med <= p90
        assert float(r["images_per_s"]) == pytest.approx(int(r["batch"]) * 1e3 / med, rel=1e-6)
    peak = {(r["model"], r["batch"]): float(r["peak_mb"]) for r in rows}
    for b in ("1", "2"):  # memory is counted, not timed: the pruned network's activations are smaller
        assert 0 < peak[("pruned", b)] < peak[("original", b)]
    assert peak[("original", "1")] < peak[("original", "2")]
    for r in rows:  # the pruned network is timed against the original in alternating rounds
        assert (r["speedup"] == "") == (r["model"] == "original"), r
        assert r["model"] == "original" or (float(r["speedup"]) > 0 and float(r["speedup_error"]) >= 0)
    assert not (pruned / "bench.csv").exists()  # --out was honoured


def test_bench_times_onnx_runtime_when_installed(pruned: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    csv_path = tmp_path / "bench.csv"
    res = lcp_cli(
        "bench", pruned, "--batch", "1", "--repeats", "2", "--no-compile", "--threads", "1", "--out", csv_path
    )
    assert res.code == 0, res.err
    onnx = {r["model"]: float(r["median_ms"]) for r in read_csv(csv_path) if r["runtime"] == "onnxruntime"}
    assert set(onnx) == {"original", "pruned"} and all(v > 0 for v in onnx.values())
    assert "[torch.onnx]" not in res.out  # the exporter's narration is not in lcp's output


def test_bench_needs_a_folder_or_a_model(pruned: Path) -> None:
    assert_one_line_error(lcp_cli("bench", "--no-compile"), "pass a pruned folder (lcp bench DIR) or --model NAME")
    assert_one_line_error(lcp_cli("bench", pruned, "--model", "resnet20", "--no-compile"), "pass a pruned folder")


# ---------------------------------------------------------------------------------------- search, then prune


def test_search_then_prune_with_its_transforms(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    common = [
        "--model",
        "resnet20",
        "--data",
        tiny_folder,
        "--checkpoint",
        resnet20_ckpt,
        "--holdout",
        "9",
        "--no-progress",
    ]
    recovery = ["--batch-size", "16", "--recal-batches", "1"]  # lcp search has no recovery: not its options
    res = lcp_cli(
        "search",
        *common,
        "--budget",
        "0.5",
        "--candidates",
        "8",
        "--population",
        "4",
        "--tournament",
        "2",
        "--out",
        tmp_path / "search",
    )
    assert res.code == 0, res.err
    found = json.loads((tmp_path / "search" / "transforms.json").read_text())
    assert len(read_csv(tmp_path / "search" / "search.csv")) == 8
    assert not (tmp_path / "search" / "model.safetensors").exists()  # search only: nothing pruned
    pairs = {g["group"]: (g["alpha"], g["kappa"]) for g in found["groups"]}
    assert any(p != (1.0, 0.0) for p in pairs.values())  # the search moved away from the identity

    # options of stages lcp search does not run are not offered; a recipe's transforms file is refused
    res = lcp_cli("search", *common, "--finetune-epochs", "2", "--out", tmp_path / "s2")
    assert res.code == 2 and "unrecognized arguments: --finetune-epochs" in res.err, res.err
    recipe = tmp_path / "with_transforms.yaml"
    recipe.write_text(f"transforms: {tmp_path / 'search' / 'transforms.json'}\n")
    res = lcp_cli("search", *common, "--recipe", recipe, "--out", tmp_path / "s3")
    assert_one_line_error(res, "lcp search learns the transforms")
    assert not (tmp_path / "s3").exists()
    recipe.write_text("episodes: 5\n")  # an agent's option: lcp search has no --method to offer
    res = lcp_cli("search", *common, "--recipe", recipe, "--out", tmp_path / "s3")
    line = assert_one_line_error(res, "--episodes is an option of method", "lcp search would ignore it")
    assert "--method" not in line
    assert not (tmp_path / "s3").exists()

    res = lcp_cli(
        "prune",
        *common,
        *recovery,
        "--method",
        "lcp",
        "--transforms",
        tmp_path / "search" / "transforms.json",
        "--budget",
        "0.6",
        "--finetune-epochs",
        "0",
        "--out",
        tmp_path / "prune",
    )
    assert res.code == 0, res.err
    assert found["learned_with"] == {"importance": "l2", "aggregate": "mean"}
    other = lcp_cli(
        "prune",
        *common,
        "--method",
        "lcp",
        "--transforms",
        tmp_path / "search" / "transforms.json",
        "--importance",
        "l1",
        "--out",
        tmp_path / "l1",
    )
    assert_one_line_error(other, "was learned on scores of --importance l2", "search again")
    out = tmp_path / "prune"
    used = json.loads((out / "transforms.json").read_text())
    assert used["learned_with"] == found["learned_with"]  # lcp prune's folder says it too (it did not)
    assert {g["group"]: (g["alpha"], g["kappa"]) for g in used["groups"]} == pairs
    assert not (out / "search.csv").exists()  # no search of its own
    row = read_report(out)
    assert row["method"] == "lcp" and float(row["search_s"]) == 0.0 and 0.57 <= float(row["macs_ratio"]) <= 0.6
    by_group = {r["group"]: (float(r["alpha"]), float(r["kappa"])) for r in read_csv(out / "layers.csv")}
    for name, (alpha, kappa) in by_group.items():
        assert alpha == pytest.approx(pairs[name][0], rel=1e-6) and kappa == pytest.approx(pairs[name][1], abs=1e-9)
    # the transforms decide the cut: the identity gives another network
    ident = {"groups": [dict(g, alpha=1.0, kappa=0.0) for g in found["groups"]]}
    (tmp_path / "identity.json").write_text(json.dumps(ident))
    res = lcp_cli(
        "prune",
        *common,
        *recovery,
        "--method",
        "lcp",
        "--transforms",
        tmp_path / "identity.json",
        "--budget",
        "0.6",
        "--finetune-epochs",
        "0",
        "--out",
        tmp_path / "ident",
    )
    assert res.code == 0, res.err
    units = [json.loads((d / "channels.json").read_text())["removed_units"] for d in (out, tmp_path / "ident")]
    assert units[0] != units[1]


# -------------------------------------------------------------------------------------------------- baseline


def test_no_channels_last_also_keeps_the_baseline_lcp_prune_trains_in_nchw(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--no-channels-last is a training option: the baseline trained for lack of weights follows it too."""
    import lcp.run.load as load_module

    monkeypatch.setenv("LCP_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.setenv("LCP_CACHE", str(tmp_path / "cache"))
    layouts = []
    real = load_module.train_baseline

    def spy(*args, **kwargs):
        done = real(*args, **kwargs)
        layouts.append(done["channels_last"])
        return done

    monkeypatch.setattr(load_module, "train_baseline", spy)
    common = ["prune", "--model", "resnet20", "--data", tiny_folder, "--baseline-epochs", "1", "--budget", "0.5"]
    common += ["--method", "global", "--finetune-epochs", "0", "--holdout", "9", "--batch-size", "16"]
    common += ["--recal-batches", "1", "--no-progress", "--device", "cpu"]
    res = lcp_cli(*common, "--no-channels-last", "--out", tmp_path / "nchw")
    assert res.code == 0, res.err
    monkeypatch.setenv("LCP_CACHE", str(tmp_path / "cache2"))  # not the cached baseline: train again
    res = lcp_cli(*common, "--out", tmp_path / "default")
    assert res.code == 0, res.err
    assert layouts == [False, True]


def test_prune_trains_a_baseline_when_no_weights_exist(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LCP_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.setenv("LCP_CACHE", str(tmp_path / "cache"))
    args = [
        "prune",
        "--model",
        "resnet20",
        "--data",
        tiny_folder,
        "--baseline-epochs",
        "1",
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
        "1",
        "--no-progress",
    ]
    res = lcp_cli(*args, "--out", tmp_path / "a")
    assert res.code == 0, res.err
    said = res.out + res.err
    assert "no weights for resnet20 on tiny" in said and "training a baseline for 1 epochs first" in said
    (cached,) = (tmp_path / "cache" / "weights").glob("resnet20_tiny-*.safetensors")  # named by data and settings
    assert f"baseline saved to {cached}" in said and cached.is_file()
    assert not cached.with_suffix(".training").exists()
    # the baseline is trained (not the random initialisation) and is what the run pruned
    state = load_file(cached)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        init = lcp.create_model("resnet20", num_classes=3).state_dict()
    assert not torch.equal(state["linear.weight"], init["linear.weight"])
    row = read_report(tmp_path / "a")
    assert 0 <= float(row["top1_base"]) <= 100
    # a second run reuses the cached baseline and says nothing about training
    res = lcp_cli(*args, "--out", tmp_path / "b")
    assert res.code == 0, res.err
    assert "training a baseline" not in res.out + res.err
    assert read_report(tmp_path / "b")["top1_base"] == row["top1_base"]
    # other baseline settings train their own baseline, never resuming or reusing this one
    two = list(args)
    two[two.index("--baseline-epochs") + 1] = "2"
    res = lcp_cli(*two, "--out", tmp_path / "c")
    assert res.code == 0, res.err
    assert "training a baseline for 2 epochs first" in res.out + res.err
    assert len(list((tmp_path / "cache" / "weights").glob("resnet20_tiny-*.safetensors"))) == 2
    # another held-out split trains on other images: its own baseline, never one that saw its held-out images
    res = lcp_cli(*[a if a != "9" else "6" for a in args], "--out", tmp_path / "d")
    assert res.code == 0, res.err
    assert "training a baseline for 1 epochs first" in res.out + res.err
    assert len(list((tmp_path / "cache" / "weights").glob("resnet20_tiny-*.safetensors"))) == 3
    # the same seed trains the same baseline from the same initial weights (another cache, another process state)
    torch.manual_seed(12345)
    monkeypatch.setenv("LCP_CACHE", str(tmp_path / "cache2"))
    res = lcp_cli(*args, "--out", tmp_path / "e")
    assert res.code == 0, res.err
    (again,) = (tmp_path / "cache2" / "weights").glob("resnet20_tiny-*.safetensors")
    assert again.name == cached.name and load_file(again).keys() == state.keys()
    assert all(torch.equal(load_file(again)[k], v) for k, v in state.items())


# -------------------------------------------------------------------------------------------------------- kd


def test_kd_fine_tunes_with_distillation(
    tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teachers, weights, layouts = [], [], []
    real = lcp.training.train.finetune

    def spy(model, data, *args, **kwargs):  # which teacher, loss weight and layout the pipeline hands to fine-tuning
        teachers.append(kwargs.get("teacher"))
        weights.append(kwargs.get("kd_alpha"))
        res = real(model, data, *args, **kwargs)
        layouts.append((kwargs.get("channels_last"), res["channels_last"]))
        return res

    monkeypatch.setattr(lcp.training.train, "finetune", spy)
    outs = {}
    runs = (  # distillation and the channels-last layout are on by default
        ("plain", ("--no-kd",)),
        ("kd", ()),
        ("kd_only", ("--kd-weight", "1")),
        ("kd_nchw", ("--no-channels-last",)),
    )
    for name, extra in runs:
        outs[name] = tmp_path / name
        res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, outs[name], "--lr", "0.05", *extra, finetune=1))
        assert res.code == 0, res.err
    assert len(teachers) == 4 and teachers[0] is None and isinstance(teachers[1], torch.nn.Module)
    assert weights[1:] == [0.9, 1.0, 0.9]
    assert layouts == [(None, True)] * 3 + [(False, False)]
    rows = {k: read_report(v) for k, v in outs.items()}
    assert rows["plain"]["top1_pruned_noft"] == rows["kd"]["top1_pruned_noft"]  # the same cut before fine-tuning
    a, b = load_file(outs["plain"] / "model.safetensors"), load_file(outs["kd"] / "model.safetensors")
    assert a.keys() == b.keys()
    assert not torch.equal(a["linear.weight"], b["linear.weight"])  # distillation changed the fine-tuning
    c = load_file(outs["kd_only"] / "model.safetensors")
    assert not torch.equal(b["linear.weight"], c["linear.weight"])  # so did the weight of its term
    bad = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, tmp_path / "bad", "--kd-weight", "1.5", finetune=1))
    assert_one_line_error(bad, "kd")
    assert json.loads((outs["kd"] / "run.json").read_text())["signature"]["kd"] is True


# ------------------------------------------------------------------------------------------- train --resume


def test_train_resume_continues_from_the_checkpoint(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [
        "train",
        "--model",
        "resnet20",
        "--data",
        tiny_folder,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--holdout",
        "9",
        "--threads",
        "1",
    ]
    ref = lcp_cli(*args, "--out", tmp_path / "ref", "--no-progress")
    assert ref.code == 0, ref.err

    real = lcp.training.train.save_checkpoint

    def save_then_interrupt(*a, **kw):  # Ctrl-C right after the first epoch's checkpoint
        real(*a, **kw)
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        mp.setattr(lcp.training.train, "save_checkpoint", save_then_interrupt)
        res = lcp_cli(*args, "--out", out, "--no-progress")
    assert res.code == 130 and "--resume" in res.err, res.err
    assert (out / "training.safetensors").is_file() and not (out / "report.csv").exists()

    res = lcp_cli(*args, "--out", out, "--resume")  # with progress: one line per trained epoch
    assert res.code == 0, res.err
    assert "epoch 1/2" not in res.err and "epoch 2/2" in res.err, res.err
    row = read_report(out)
    assert row["resumed_from_epoch"] == "1" and row["epochs"] == "2"
    assert [r["epoch"] for r in read_csv(out / "history.csv")] == ["1", "2"]
    assert not (out / "training.safetensors").exists()
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed run differs"
    assert math.isclose(float(row["top1"]), float(read_report(tmp_path / "ref")["top1"]))


def test_a_speedup_the_timing_rounds_disagree_on_is_left_out_of_the_report(monkeypatch) -> None:
    """A busy machine: rounds that disagree are timed again, and a ratio still that uncertain is not reported."""
    import types

    import lcp.run.recover as recover

    calls = []

    def timed(rounds):
        def fake(*a, **k):
            calls.append(1)
            return {"rounds": rounds, "reference_ms": 10.0, "median_ms": 5.0, "ratio": 0.5}

        return fake

    result = types.SimpleNamespace(info={}, model=None)
    options = types.SimpleNamespace(latency_batch=1, device="cpu", threads=1)
    logged: list[str] = []
    monkeypatch.setattr(recover, "paired_latency", timed([0.5, 0.5, 0.51, 0.49, 0.5]))
    cols = recover.latency_columns(result, None, (3, 8, 8), options, log=logged.append)
    assert cols["speedup"] == 2.0 and cols["latency_error"] < 0.05 and len(calls) == 1 and not logged
    calls.clear()
    monkeypatch.setattr(recover, "paired_latency", timed([0.04, 0.5, 0.9, 0.02, 1.6]))
    cols = recover.latency_columns(result, None, (3, 8, 8), options, log=logged.append)
    assert len(calls) == 3 and math.isnan(cols["speedup"]) and cols["latency_error"] > recover.LATENCY_ERROR_LIMIT
    assert len(logged) == 1 and logged[0].startswith("latency not reported: the timing rounds disagree")

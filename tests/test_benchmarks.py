"""The benchmark harness end to end: ``benchmarks/compare.py --quick`` on the tiny fixture data, resume, refusal
of mixed settings, ``benchmarks/report.py`` on its CSV, and Torch-Pruning driven to a MACs target."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lcp.report import REPORT_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "benchmarks" / "compare.py"
REPORT = ROOT / "benchmarks" / "report.py"
METHODS = ["lcp", "global", "uniform", "random", "torch_pruning"]
BUDGETS = [0.5, 0.3]


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _has_tp() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def quick(tiny_folder: Path, resnet20_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """One ``--quick`` run of the ResNet-56 recipe on the tiny folder (ResNet-20, 3 classes): (csv, cmd, output)."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results" / "compare_tiny.csv"
    cmd = [sys.executable, str(COMPARE), "--recipe", str(ROOT / "recipes" / "bench_resnet56.yaml"), "--quick",
           "--data", str(tiny_folder), "--checkpoint", str(resnet20_ckpt), "--holdout", "12",
           "--out", str(out), "--work", str(tmp / "work"), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, cmd, done.stdout


def test_quick_writes_a_row_per_method_budget_and_seed(quick):
    out, _, log = quick
    df = pd.read_csv(out)
    expected = [*REPORT_COLUMNS, "latency_base_ms", "latency_pruned_ms", "speedup", "latency64_base_ms",
                "latency64_pruned_ms", "speedup64", "status", "finetune_steps", "config"]
    assert [c for c in expected if c not in df.columns] == []
    assert list(df.columns[: len(REPORT_COLUMNS)]) == REPORT_COLUMNS
    assert sorted((m, b) for m, b in zip(df["method"], df["budget"])) == sorted(
        (m, b) for m in METHODS for b in BUDGETS)
    assert set(df["seed"]) == {0} and df["config"].nunique() == 1
    assert (df["model"] == "resnet20").all() and (df["dataset"] == "tiny").all()
    ours = df[df["method"] != "torch_pruning"]
    assert (ours["status"] == "ok").all(), ours["status"].tolist()
    for _, r in ours.iterrows():
        assert 0.9 * r["budget"] <= r["macs_ratio"] <= r["budget"] + 1e-9
        assert 0 <= r["top1_pruned_noft"] <= 100 and 0 <= r["top1_pruned"] <= 100
        assert r["finetune_steps"] >= 1 and r["finetune_s"] > 0
        assert r["latency_pruned_ms"] > 0 and r["latency64_pruned_ms"] > 0 and r["speedup64"] > 0
    # learn once, prune many: one search serves both lcp rows; the other methods have none
    lcp_rows = ours[ours["method"] == "lcp"]
    assert lcp_rows["search_s"].nunique() == 1 and lcp_rows["search_s"].iloc[0] > 0
    assert (ours.loc[ours["method"] != "lcp", "search_s"] == 0).all()
    # the identical recipe: the same baseline and the same fine-tuning length in every row
    assert df["top1_base"].nunique() == 1 and ours["finetune_steps"].nunique() == 1
    tp = df[df["method"] == "torch_pruning"]
    for status in tp["status"]:
        if _has_tp():
            assert status == "ok" or (status.startswith("error: ") and len(status) > 12), status
        else:
            assert status.startswith("skipped: torch-pruning is not installed"), status
    for _, r in tp[tp["status"] == "ok"].iterrows():
        assert r["macs_ratio"] <= r["budget"] + 1e-9 and r["top1_pruned"] >= 0
    assert "done in" in log


def test_quick_resumes_and_refuses_other_settings(quick):
    out, cmd, _ = quick
    before = pd.read_csv(out)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=out.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "10 of 10 rows already" in again.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out), before)
    other = subprocess.run(cmd + ["--finetune-epochs", "0"], capture_output=True, text=True, timeout=120,
                           cwd=out.parent)
    assert other.returncode == 2 and "other settings" in other.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out), before)


def test_report_on_the_quick_csv(quick, tmp_path: Path):
    out, _, _ = quick
    md, png = tmp_path / "benchmarks.md", tmp_path / "benchmarks.png"
    done = subprocess.run([sys.executable, str(REPORT), "--csv", str(out), "--md", str(md), "--png", str(png)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    text = md.read_text()
    assert "## ResNet-20 / tiny" in text and "Smoke test (`--quick`)" in text
    assert "| method | budget | seeds | MACs ratio |" in text
    for m in METHODS[:4]:
        assert f"| `{m}` | 0.5 |" in text and f"| `{m}` | 0.3 |" in text
    assert "torch_pruning" in text
    assert "compare.py --recipe" in text and "report.py --csv" in text  # the exact commands
    assert "fine-tuning for **0.5 epochs**" in text
    assert "93.9" in text and "AMC 92.8" in text and "## Published numbers" in text
    assert "{" not in text.replace("```", "")  # no unformatted placeholder
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not _has_tp(), reason="torch-pruning is not installed (pip install -e '.[bench]')")
def test_torch_pruning_reaches_the_macs_target():
    import lcp

    compare = _module(COMPARE, "bench_compare")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = lcp.create_model("mobilenetv2", num_classes=10).eval()
    x = torch.zeros(1, 3, 32, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on the shared 2-core machine made this 10x slower
    try:
        pruned, info = compare.tp_prune(model, x, budget=0.5, budget_type="macs", num_classes=10)
    finally:
        torch.set_num_threads(threads)
    ratio = lcp.count_macs(pruned, x) / lcp.count_macs(model, x)
    assert 0.5 * 0.98 <= ratio <= 0.5 and info["tp_tries"] >= 1
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert lcp.count_macs(model, x) == 24461312  # the original is untouched

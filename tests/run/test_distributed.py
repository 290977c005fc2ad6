"""Fine-tuning under torchrun (DistributedDataParallel, gloo on CPU) with the same `lcp prune` command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lcp
from tests.helpers import make_image_folder, save_state_dict


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``ds``: 3 classes of 40 train and 12 test images; ``r20.pt``: a seeded 3-class ResNet-20."""
    root = tmp_path_factory.mktemp("ddp")
    make_image_folder(root / "ds", train_per_class=40, test_per_class=12)
    save_state_dict("resnet20", 3, root / "r20.pt")
    return root


def _prune_args(root: Path, out: Path) -> list[str]:
    return [
        "prune",
        "--model",
        "resnet20",
        "--data",
        str(root / "ds"),
        "--checkpoint",
        str(root / "r20.pt"),
        "--budget",
        "0.5",
        "--method",
        "global",
        "--finetune-epochs",
        "2",
        "--holdout",
        "12",
        "--batch-size",
        "16",
        "--recal-batches",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]


def test_torchrun_two_processes_finetune(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LCP_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lcp.cli",
        *_prune_args(data, out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for name in ("model.safetensors", "channels.json", "report.csv"):
        assert (out / name).is_file()
    assert not (out / "finetune.ckpt").exists()
    # the fine-tuned weights moved away from the pruned starting point, and the folder reloads
    model = lcp.load(out)
    start = lcp.prune(
        lcp.create_model("resnet20", num_classes=3, checkpoint=data / "r20.pt"), torch.zeros(1, 3, 32, 32), budget=0.5
    ).model
    assert lcp.count_macs(model, torch.zeros(1, 3, 32, 32)) == lcp.count_macs(start, torch.zeros(1, 3, 32, 32))
    assert not torch.equal(model.linear.weight, start.linear.weight)

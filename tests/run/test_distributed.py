"""Fine-tuning under torchrun (DistributedDataParallel, gloo on CPU) with the same `lcp prune` command."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lcp


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        for c in range(3):
            d = root / "ds" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((32, 32, 3)) * 80 + c * 60).astype("uint8")).save(d / f"{i}.png")
    torch.manual_seed(0)
    torch.save(lcp.create_model("resnet20", num_classes=3).state_dict(), root / "r20.pt")
    return root


def _prune_args(root: Path, out: Path) -> list[str]:
    return ["prune", "--model", "resnet20", "--data", str(root / "ds"), "--checkpoint", str(root / "r20.pt"),
            "--budget", "0.5", "--method", "global", "--finetune-epochs", "2", "--holdout", "12",
            "--batch-size", "16", "--recal-batches", "2", "--no-progress", "--out", str(out)]


def test_torchrun_two_processes_finetune(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LCP_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lcp.cli",
           *_prune_args(data, out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for name in ("model.safetensors", "channels.json", "report.csv"):
        assert (out / name).is_file()
    assert not (out / "finetune.ckpt").exists()
    # the fine-tuned weights moved away from the pruned starting point, and the folder reloads
    model = lcp.load(out)
    start = lcp.prune(lcp.create_model("resnet20", num_classes=3, checkpoint=data / "r20.pt"),
                      torch.zeros(1, 3, 32, 32), budget=0.5).model
    assert lcp.count_macs(model, torch.zeros(1, 3, 32, 32)) == lcp.count_macs(start, torch.zeros(1, 3, 32, 32))
    assert not torch.equal(model.linear.weight, start.linear.weight)

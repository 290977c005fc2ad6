"""Fine-tuning under torchrun (DistributedDataParallel, gloo on CPU) with the same `lcp prune` command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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


#: lcp.cli under torchrun, saving each rank's fine-tuned parameters (DistributedDataParallel keeps them equal)
EACH_RANK = """
import os, runpy, sys
from safetensors.torch import save_file
from lcp.training import train
finetune = train.finetune
def spy(model, *a, **k):
    out = finetune(model, *a, **k)
    params = {n: p.detach().contiguous() for n, p in model.named_parameters()}
    save_file(params, os.path.join(os.environ["LCP_RANK_DIR"], f"rank{os.environ['RANK']}.safetensors"))
    return out
train.finetune = spy
sys.argv = ["lcp", *sys.argv[1:]]
runpy.run_module("lcp.cli", run_name="__main__", alter_sys=True)
"""


def test_torchrun_two_processes_finetune(data, tmp_path):
    """Two processes fine-tune one model: gradients are averaged across them, so both end with the same weights;
    rank 0 writes the folder."""
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    script = tmp_path / "each_rank.py"
    script.write_text(EACH_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LCP_CACHE": str(tmp_path / "cache"), "LCP_RANK_DIR": str(ranks)}
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
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
    # each process saw half the batches, yet both hold the same weights: the gradients were all-reduced
    r0, r1 = (load_file(ranks / f"rank{r}.safetensors") for r in (0, 1))
    assert r0.keys() == r1.keys() and len(r0) > 10
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert all(torch.equal(r0[k], v) for k, v in model.state_dict().items() if k in r0)  # what rank 0 wrote


def test_the_process_group_and_device_follow_the_run_s_device(monkeypatch):
    """A CPU run on a machine with GPUs joins gloo (nccl cannot carry CPU tensors); a CUDA run joins nccl with
    each rank on its own GPU (LOCAL_RANK) before any work; LCP_DDP_BACKEND overrides the backend."""
    from lcp.training.distributed import distributed

    joined, chosen = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("LCP_DDP_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", joined.append)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    assert distributed("cpu") == (2, 1) and chosen == []
    assert distributed("cuda") == (2, 1) and chosen == [1]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU visible per rank: it is the rank's
    monkeypatch.setenv("LCP_DDP_BACKEND", "gloo")
    distributed("cuda")
    assert joined == ["gloo", "nccl", "gloo"] and chosen == [1]


def test_a_cpu_run_saves_no_cuda_rng_state(monkeypatch):
    from lcp.training import checkpoint

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("CUDA started to save its RNG"))
    assert list(checkpoint._rng_state()) == ["rng.torch"]


def test_a_resume_restores_the_cuda_rng_states_of_the_gpus_it_still_sees(monkeypatch):
    from lcp.training import checkpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, i: restored.append(i))
    state = torch.zeros(16, dtype=torch.uint8)
    checkpoint._set_rng_state({"rng.torch": torch.get_rng_state(), "rng.cuda.0": state, "rng.cuda.1": state})
    assert restored == [0]  # saved with 2 GPUs, resumed with 1 visible: no IndexError

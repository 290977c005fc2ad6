#!/usr/bin/env bash
# The GPU measurements of docs/search.md and docs/latency.md in one short run (about 8 minutes on one H200).
#
#   source ../shared/offline-env.sh && bash benchmarks/gpu_check.sh OUT_DIR
#
# 1. what --round-to auto chooses on this GPU (batch 1 and 64) for ResNet-56 and MobileNetV2;
# 2. MACs budgets 0.7/0.5/0.3 (plain global cut, random weights) re-timed against the original at batch 1 and 64,
#    widths as the ranking leaves them (--round-to 1) and aligned (--round-to auto, measured at batch 64);
# 3. the default search (`fast` preset) on the GPU, seed 0: its time per candidate;
# 4. LeGR's 400-candidate reference search on the GPU for ResNet-56 seeds 1 and 2 (accuracy, not timing: both run
#    at once).
# Each step has its own time limit, so one that overruns leaves the others' results.
set -u
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
limit=${GPU_CHECK_SECONDS:-560}  # the whole script; step 4 gets what is left
dev=${GPU_CHECK_DEVICE:-cuda}  # cpu: a dry run of the script here
export DEV=$dev
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python -c "import torch; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())"
    nproc
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

echo "== 1. alignment"
timeout 60 python - <<'EOF' 2>&1 | tee "$out/alignment.txt"
import os

import torch

import lcp
from lcp.cut.alignment import measure_alignment

for name in ("resnet56", "mobilenetv2"):
    graph = lcp.build_graph(lcp.create_model(name).eval(), torch.zeros(1, 3, 32, 32))
    for batch in (1, 64):
        found = measure_alignment(graph, device=os.environ["DEV"], batch=batch)
        print(name, f"batch {batch}:", found.describe())
        print("  ms by width:", {c: round(t, 4) for c, t in found.ms.items()})
EOF

echo "== 2. MACs budgets, round_to 1 and auto"
for r in 1 auto; do
    timeout 100 python benchmarks/latency.py --device $dev --models resnet56,mobilenetv2 --budgets 0.7,0.5,0.3 \
        --kinds macs --round-to "$r" --repeats 100 --rounds 10 --min-seconds 0.3 \
        --out "$out/latency_cuda_round_$r.csv" --plot "/tmp/latency_cuda_round_$r.png" 2>&1 | tail -12
done

echo "== 3. default search on the GPU"
for m in resnet56 mobilenetv2; do
    timeout 130 python benchmarks/search_table.py --device $dev --models $m --runs fast:legr \
        --seeds 0 --threads 4 --out "$out/search_cuda.csv" --work /tmp/search_gpu 2>&1 | grep -v "^\s*$" | tail -8
done

left=$((limit - SECONDS))
echo "== 4. LeGR reference on the GPU, ResNet-56 seeds 1 and 2 (together; $left s left)"
[ "$left" -gt 60 ] || { ls -l "$out"; exit 0; }
for s in 1 2; do
    timeout "$left" python benchmarks/search_table.py --device $dev --models resnet56 --runs legr:legr --seeds "$s" \
        --threads 4 --out "$out/search_cuda_ref_s$s.csv" --work /tmp/search_gpu >"/tmp/ref_s$s.log" 2>&1 &
done
wait
tail -3 /tmp/ref_s1.log /tmp/ref_s2.log
ls -l "$out"

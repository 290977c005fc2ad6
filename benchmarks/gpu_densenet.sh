#!/usr/bin/env bash
# The DenseNet-40 connection-pruning table on one lent GPU in one short run: train the baseline
# (recipes/densenet40_cifar10.yaml; 5,000 training images held out for the searches), then the rows of
# recipes/bench_densenet40.yaml at 0.5 of the MACs, seed 0, as parallel chains of benchmarks/compare.py (no
# timing under a shared GPU: --latency-repeats 0): ads and lwp (the connection searches), uniform, global, lcp
# and the ceiling (the unpruned network through the same 2 fine-tuning epochs). The trained weights come back in
# OUT with the table's CSV and logs. One device call runs at most 600 s (GPU_DENSENET_SECONDS, default 540, covers
# the training too): if the training leaves too little time, carry the weights to a second call as
# GPU_DENSENET_CKPT=FILE, which skips the training.
#
#   source ../shared/offline-env.sh && bash benchmarks/gpu_densenet.sh OUT
#   cp OUT/densenet40_cifar10.safetensors ~/.cache/lcp/weights/   # ($LCP_CACHE/weights), or pass it as --checkpoint
#   python benchmarks/merge_rows.py --into benchmarks/results/compare_densenet40_cuda.csv --budgets 0.5 OUT/csv/*.csv
#
# A dry run here (random weights, the recipes' quick sections, about 3 minutes on 2 cores):
#   python -c "import torch, lcp; torch.save(lcp.create_model('densenet40').state_dict(), '/tmp/d40.pt')"
#   GPU_DENSENET_DEVICE=cpu GPU_DENSENET_QUICK=--quick GPU_DENSENET_CKPT=/tmp/d40.pt bash benchmarks/gpu_densenet.sh /tmp/d40out
set -u
out=${1:?usage: gpu_densenet.sh OUT_DIR}
mkdir -p "$out/csv" "$out/log"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
dev=${GPU_DENSENET_DEVICE:-cuda}
quick=${GPU_DENSENET_QUICK:-}
limit=${GPU_DENSENET_SECONDS:-540}  # the whole run, training included (one device call runs at most 600 s)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_densenet.XXXX")  # fresh: no search state of an earlier run is resumed
ckpt=${GPU_DENSENET_CKPT:-}
SECONDS=0
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

if [ -z "$ckpt" ]; then
    echo "== training DenseNet-40 (${GPU_DENSENET_EPOCHS:-40} epochs)"
    timeout -k 10 $((limit - 120)) python -m lcp.cli train --recipe recipes/densenet40_cifar10.yaml --device "$dev" \
        --out "$work/train" --no-progress --epochs "${GPU_DENSENET_EPOCHS:-40}" \
        --batch-size "${GPU_DENSENET_BATCH:-64}" 2>&1 | tail -n 5
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "training failed or ran out of time (GPU_DENSENET_EPOCHS fewer)"; exit 1; }
    ckpt=$work/train/model.safetensors
    cp "$ckpt" "$out/densenet40_cifar10.safetensors" || exit 1
fi
[ -f "$ckpt" ] || { echo "no trained weights at $ckpt"; exit 1; }

# one chain: NAME, then the methods it runs in order until the time is up
chain() {
    local name=$1
    shift
    for methods in "$@"; do
        left=$((limit - SECONDS))
        [ "$left" -gt 20 ] || break
        timeout -k 10 "$left" python benchmarks/compare.py --recipe recipes/bench_densenet40.yaml $quick --device "$dev" \
            --checkpoint "$ckpt" --threads 1 --latency-repeats 0 --no-progress --methods "$methods" --seeds 0 \
            ${GPU_DENSENET_EXTRA:-} --out "$out/csv/$name.csv" --work "$work/$name" >>"$out/log/$name.log" 2>&1
    done
}
chain c1 ads &
chain c2 lwp &
chain c3 ceiling uniform &
chain c4 global lcp &
wait
grep -h -E "seed [0-9]:|Error|error" "$out"/log/*.log | tail -20
ls -l "$out" "$out/csv"
for c in c1 c2 c3 c4; do [ -s "$out/csv/$c.csv" ] || { echo "chain $c wrote no rows"; exit 1; }; done

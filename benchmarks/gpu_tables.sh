#!/usr/bin/env bash
# The distilled-recovery tables of docs/benchmarks.md on one GPU, in short runs (9 minutes on an H200 each):
# ResNet-56 and MobileNetV2 at 0.5 of the MACs (ceiling, lcp, global, uniform, random, torch_pruning; seeds 0-2 for
# the ceiling, lcp, global and uniform) and at 0.3 (lcp searched at 0.3, global, uniform, random, torch_pruning,
# seed 0), each row with the recipe's recovery (recipes/bench_kd_*.yaml: 3 distilled epochs). The rows run as
# parallel chains of benchmarks/compare.py, so none of them is timed (--latency-repeats 0); a chain that runs out of
# time leaves the rows it finished, and a later run does only the rows the committed tables lack (14 chains at
# once starved the lcp searches on 2026-12-04: GPU_TABLES_ONLY=lcp then ran them alone). Then, with the GPU to
# itself, the MACs budgets 0.7/0.5/0.3 with width and depth (--depth, --round-to auto) re-timed against the
# originals (benchmarks/latency.py; GPU_TABLES_LATENCY=0 skips it).
#
#   source ../shared/offline-env.sh && bash benchmarks/gpu_tables.sh OUT
#   tar -C OUT -xzf OUT/tables.tgz
#   python benchmarks/merge_rows.py --into benchmarks/results/compare_kd_resnet56_cuda.csv --budgets 0.5 \
#       OUT/csv/resnet56_*.csv   # and --budgets 0.3 into compare_kd_resnet56_03_cuda.csv; likewise mobilenetv2
#
# GPU_TABLES_DEVICE=cpu GPU_TABLES_QUICK=--quick GPU_TABLES_MODELS=resnet56: a dry run of the script here.
set -u
out=${1:?usage: gpu_tables.sh OUT_DIR}
mkdir -p "$out/csv" "$out/log"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
limit=${GPU_TABLES_SECONDS:-440}  # the tables; the latency step runs after them
dev=${GPU_TABLES_DEVICE:-cuda}
quick=${GPU_TABLES_QUICK:-}
models=${GPU_TABLES_MODELS:-resnet56 mobilenetv2}
work=${TMPDIR:-/tmp}/gpu_tables
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python -c "import torch; print('torch', torch.__version__)"
    nproc
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

# decode the data once (the cache every chain then reads)
python -c "from lcp.training.data import load_data; load_data('cifar10')" || exit 1

# one chain: NAME, then one "methods budgets seeds" triple per compare.py call, run in order until the time is up;
# it starts from the rows already in the committed tables, so compare.py skips them and only the missing ones run
chain() {
    local name=$1 model=$2 r=benchmarks/results/compare_kd_$2
    shift 2
    if [ -z "$quick" ] && [ -f "${r}_cuda.csv" ]; then
        python benchmarks/merge_rows.py --into "$out/csv/$name.csv" --budgets 0.5,0.3 "${r}"_*cuda.csv >/dev/null
    fi
    for call in "$@"; do
        read -r methods budgets seeds <<<"$call"
        left=$((limit - SECONDS))
        [ "$left" -gt 20 ] || break
        timeout "$left" python benchmarks/compare.py --recipe "recipes/bench_kd_$model.yaml" $quick --device "$dev" \
            --threads 1 --latency-repeats 0 --no-progress --methods "$methods" --budgets "$budgets" \
            --seeds "$seeds" --out "$out/csv/$name.csv" --work "$work/$name" >>"$out/log/$name.log" 2>&1
    done
}

for m in $models; do
    if [ "${GPU_TABLES_ONLY:-}" = lcp ]; then  # a second run for the lcp rows alone
        chain "${m}_l1" "$m" "lcp 0.5 0" "lcp 0.5 1" &
        chain "${m}_l2" "$m" "lcp 0.5 2" &
        chain "${m}_l3" "$m" "lcp 0.3 0" &
        continue
    fi
    chain "${m}_c1" "$m" "ceiling 0.5 0" "random 0.5 0" "ceiling 0.5 1" &
    chain "${m}_c2" "$m" "lcp 0.5 0" "lcp 0.5 1" &
    chain "${m}_c3" "$m" "global 0.5 0,1,2" &
    chain "${m}_c4" "$m" "uniform 0.5 0,1,2" &
    chain "${m}_c5" "$m" "lcp 0.5 2" "ceiling 0.5 2" &
    chain "${m}_c6" "$m" "lcp 0.3 0" "global 0.3 0" "uniform 0.3 0" "random 0.3 0" &  # its own search, at 0.3
    chain "${m}_c7" "$m" "torch_pruning 0.5 0" "torch_pruning 0.3 0" &
done
wait
grep -h -E "seed [0-9]:|Error|error" "$out"/log/*.log | grep -v "^\s*$" | tail -40

# the searches' results (a later run resumes from them)
(cd "$work" && find . -name "*.json" | tar -czf "$out/searches.tgz" -T -)
[ "${GPU_TABLES_LATENCY:-1}" = 1 ] || { tar -C "$out" -czf "$out/tables.tgz" csv log; ls -l "$out"; exit 0; }
echo "== MACs budgets, width and depth, --round-to auto (the GPU to itself)"
timeout 100 python benchmarks/latency.py --device "$dev" --models resnet56,mobilenetv2 --budgets 0.7,0.5,0.3 \
    --kinds macs --round-to auto --depth --repeats 100 --rounds 10 --min-seconds 0.3 \
    --out "$out/latency_cuda_depth.csv" --plot "$work/latency_cuda_depth.png" 2>&1 | tail -12
tar -C "$out" -czf "$out/tables.tgz" csv log
rm -rf "$out/csv" "$out/log"
ls -l "$out"

#!/usr/bin/env bash
# The GPU rows of README's results table, in one short run on a CUDA machine:
#
#     bench/gpu_check.sh OUT_DIR [TRAIN_MINUTES] [CAPTCHAS] [BATCH_SIZE] [--amp]
#
# 1. bench_training_loop.py at BATCH_SIZE (with --amp if given): images/s of the bare
#    loop (float32 and autocast), of train_step and of main.py's train_model, and of the
#    DataLoader.
# 2. CAPTCHAS generated captchas (seed 0, all cores), then bench_accuracy_curve.py: one
#    main.py run at BATCH_SIZE (with --amp if given) whose epochs are sized from step 1's
#    train_model images/s to last about TRAIN_MINUTES, a snapshot every minute, each
#    scored on the usual 2,000 fresh held-out captchas (seed 99).
# On the H200 of bench/RESULTS.md step 1 (LOOP_STEPS=100) and the generation of 200,000
# captchas took about 3.5 minutes and scoring takes about 15 s per snapshot: allow the
# whole script TRAIN_MINUTES + 6 minutes (a 600 s command limit fits 4 minutes of training).
# Everything is written to OUT_DIR (loop.json, curve.json, curve.png and the two logs).
# LOOP_STEPS and LOOP_ROWS (default 150 and 40000) size step 1 and HELDOUT (default 2000)
# the held-out set of step 2, for a smoke run on a CPU;
# PYTHON names the interpreter (default python3).
set -euo pipefail
out=$(realpath -m "${1:?usage: bench/gpu_check.sh OUT_DIR [TRAIN_MINUTES] [CAPTCHAS] [BATCH_SIZE] [--amp]}")
minutes=${2:-4}
captchas=${3:-200000}
batch=${4:-256}
amp=${5:-}
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$out"

"$py" bench/bench_training_loop.py --steps "${LOOP_STEPS:-150}" --rows "${LOOP_ROWS:-40000}" --batch-size "$batch" $amp --json "$out/loop.json" \
    2>&1 | tr '\r' '\n' | grep --line-buffered -v '^generating\|^epoch 1/1:' | tee "$out/loop.log"

data="$out/gen-seed0-$captchas.parquet"
[ -f "$data" ] || "$py" captcha_generator.py --count "$captchas" --seed 0 --output "$data" --grid '' 2>&1 | tail -n 2
epochs=$("$py" -c "import json, sys; loop = json.load(open(sys.argv[1])); train = float(loop['config']['split_ratios'].split(',')[0]); \
print(max(1, round($minutes * 60 * loop['images_per_s']['train_model'] / (train * $captchas))))" "$out/loop.json")
echo "epochs sized to ~$minutes min: $epochs"

"$py" bench/bench_accuracy_curve.py --every 1 --heldout "${HELDOUT:-2000}" --out "$out/curve" -- --data "$data" $amp --batch-size "$batch" \
    --epochs "$epochs" 2>&1 | tr '\r' '\n' | grep --line-buffered -v '^epoch [0-9]*/[0-9]*:\|^predicting\|^generating' | tee "$out/curve.log"
cp "$out/curve/curve.json" "$out/curve/curve.png" "$out/"

#!/usr/bin/env bash
# Re-train the four models shipped in luser_cli/shipped/ from scratch and export them with
# their model cards. The four runs go in parallel, one thread each (2-core machine: about
# 2 hours in all next to other work). Usage, from the repository root:
#
#   bash examples/shipped_models/train_all.sh [RUNS_DIR]
#
# Then check them on real images before shipping (examples/shipped_models/evaluate_real.py).
set -euo pipefail
runs="${1:-runs/shipped}"
mkdir -p "$runs"
export OMP_WAIT_POLICY=PASSIVE
common=(--model luser-dw --image-size 64 --steps 560 --batch-size 4 --loss psnr --scheduler wsd
        --fp-tol 0.01 --bwd-tol 0.01 --save-every 50 --val-every 200 --threads 1 --seed 0
        --no-progress)
# CT: ct.toml (FBP start and data steps, ray weights, lr 3e-3), grey photos mixed with ellipses.
luser train --task ct "${common[@]}" --builtin mix --out "$runs/ct" > "$runs/ct.log" 2>&1 &
# MRI: photos mixed with ellipses, half of them with a smooth random phase; lr 2e-3.
for t in mri4x mri8x; do
  luser train --task "$t" "${common[@]}" --lr 2e-3 --builtin mix --random-phase \
    --out "$runs/$t" > "$runs/$t.log" 2>&1 &
done
# Deblurring: the built-in RGB photo patches; lr 2e-3.
luser train --task deblur "${common[@]}" --lr 2e-3 --out "$runs/deblur" > "$runs/deblur.log" 2>&1 &
wait
# MRI 8x: fine-tuned at 128 px from the 64 px run (the best checkpoint, at step 45, ships).
luser train --task mri8x --model luser-dw --image-size 128 --steps 90 --batch-size 4 \
  --loss psnr --scheduler wsd --lr 1e-3 --warmup-steps 5 --fp-tol 0.01 --bwd-tol 0.01 \
  --save-every 15 --val-every 45 --threads 1 --seed 1 --builtin mix --random-phase \
  --init "$runs/mri8x" --out "$runs/mri8x-128" --no-progress > "$runs/mri8x-128.log" 2>&1
python examples/shipped_models/export.py "$runs"

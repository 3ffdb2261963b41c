#!/usr/bin/env bash
# Re-train the four models shipped in luser_cli/shipped/ from scratch and export them with
# their model cards. The four first runs go in parallel, one thread each (2-core machine: about
# 2 hours next to other work), then the MRI fine-tunes at 128 px (about 2 more hours).
# Usage, from the repository root:
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
# MRI 8x: fine-tuned at 128 px from the 64 px run (best checkpoint: step 45).
mri128=(--model luser-dw --image-size 128 --batch-size 4 --loss psnr --scheduler wsd --lr 1e-3
        --fp-tol 0.01 --bwd-tol 0.01 --threads 1 --random-phase --no-progress)
luser train --task mri8x "${mri128[@]}" --steps 90 --warmup-steps 5 --save-every 15 \
  --val-every 45 --seed 1 --builtin mix --init "$runs/mri8x" --out "$runs/mri8x-128" \
  > "$runs/mri8x-128.log" 2>&1
# Both MRI models: fine-tuned at 128 px on photos, real MR slices (nibabel / pydicom example
# files) and ellipses, from the best checkpoint before (the best of each run ships).
luser train --task mri4x "${mri128[@]}" --steps 120 --warmup-steps 10 --save-every 20 \
  --val-every 40 --seed 3 --builtin mix-scans --init "$runs/mri4x" --out "$runs/mri4x-128" \
  > "$runs/mri4x-128.log" 2>&1 &
luser train --task mri8x "${mri128[@]}" --steps 200 --warmup-steps 10 --save-every 20 \
  --val-every 40 --seed 3 --builtin mix-scans --init "$runs/mri8x-128" \
  --out "$runs/mri8x-128b" > "$runs/mri8x-128b.log" 2>&1 &
wait
python examples/shipped_models/export.py "$runs"

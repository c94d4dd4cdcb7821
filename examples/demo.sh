#!/usr/bin/env bash
# The one-command demo: train a small NequIP model on 250 bundled ethanol frames (GFN2-xTB),
# evaluate it on 50 held-out frames, and run a short NVE MD with it through the ASE calculator.
# A few minutes on 2 CPU cores.
#
#   bash examples/demo.sh [OUTPUT_DIR]        (default: runs/demo-YYYYmmdd-HHMMSS)
#
# Needs `nequip-fast` on PATH (pip install -e . in the repository).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-runs/demo-$(date +%Y%m%d-%H%M%S)}"

if ! command -v nequip-fast >/dev/null; then
    echo "demo: nequip-fast is not on PATH; install the package first (pip install -e .)" >&2
    exit 1
fi
# the python that runs nequip-fast, for the MD script
python="$(sed -n '1s/^#!//p' "$(command -v nequip-fast)")"
"$python" -c "import nequip_fast" 2>/dev/null || python="${PYTHON:-python3}"

start=$SECONDS
echo "== 1/3 training (examples/demo.yaml) -> $out"
nequip-fast train "$here/demo.yaml" --output "$out"
echo
echo "== 2/3 evaluating the best model on the 50 held-out frames"
nequip-fast evaluate "$out/best.pt" "$here/data/ethanol_demo_test.extxyz" --output "$out/test_predictions.extxyz"
echo
echo "== 3/3 molecular dynamics with the trained model (ASE, NVE)"
"$python" "$here/demo_md.py" "$out/best.pt" "$here/data/ethanol_demo_test.extxyz" "$out/md.extxyz"
echo
echo "demo finished in $((SECONDS - start)) s. Outputs in $out:"
echo "  best.pt                  trained model (NequIPCalculator(\"$out/best.pt\"), nequip-fast evaluate)"
echo "  log.csv, tensorboard/    learning curves per epoch (tensorboard --logdir $out/tensorboard)"
echo "  learning_curves.png      loss and MAEs per epoch"
echo "  parity_test.png          predicted vs reference energies and forces on the test frames"
echo "  test_predictions.extxyz  predictions next to the reference labels (REF_*)"
echo "  md.extxyz                the MD trajectory"

#!/usr/bin/env bash
# The headline ratios against upstream NequIP 0.19.1 eager (issues 6 and 14), one benchmark run per
# l_max: fused `cpu` eager (E+F and training step), the deployed tabulated .pt2 (E+F; what LAMMPS
# runs) and, at l_max 1, the reference (at l_max 2 it takes minutes per round), interleaved in one
# process. fcc Cu, 4 layers, 32 features, r_max 5, parity on, float32. Needs nequip==0.19.1 (the
# test extra has it).
#
#   bash benchmarks/headline.sh [OUT_DIR] [ATOMS] [THREADS]     # defaults: build/headline 1024 2
#
# BUSY=1: the same with a second process busy for the whole run (one Python loop spinning on a
# core), as on a user's shared machine. MEMORY=1: also the peak memory of each case (fresh
# processes; adds a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-build/headline}
ATOMS=${2:-1024}
THREADS=${3:-2}
mkdir -p "$OUT"
if [ "${BUSY:-0}" = 1 ]; then
    "$PY" -c "while True: pass" &
    trap 'kill $!' EXIT
fi
SKIP=()
[ "${MEMORY:-0}" = 1 ] || SKIP=(--skip memory)
for L in 1 2; do
    # the benchmark's own model (avg_num_neighbors 42 = fcc Cu at r_max 5), saved, then deployed
    "$PY" - "$OUT/l$L.pt" "$L" <<'PY'
import sys
import torch
from nequip_fast.model import build_model
from nequip_fast.model.io import save_model
torch.manual_seed(0)
save_model(build_model(dict(species=["Cu"], r_max=5.0, num_layers=4, num_features=32, l_max=int(sys.argv[2]),
                            parity=True, avg_num_neighbors=42.0, dtype="float32")), sys.argv[1])
PY
    [ -f "$OUT/l$L.pt2" ] || "$PY" -m nequip_fast deploy "$OUT/l$L.pt" "$OUT/l$L.pt2" --backend cpu --tabulate
    uptime
    "$PY" -m nequip_fast benchmark --model "$OUT/l$L.pt2" --atoms "$ATOMS" --threads "$THREADS" \
        --backends "$([ "$L" = 1 ] && echo reference,cpu || echo cpu)" --compare-upstream --no-upstream-compile "${SKIP[@]}" \
        --warmup 1 --repeats $((L == 1 ? 7 : 5)) --json "$OUT/l$L.json"
    uptime
done

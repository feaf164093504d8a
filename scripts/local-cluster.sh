#!/usr/bin/env bash
# Starts a local dllm cluster on loopback in the foreground: three control-plane replicas
# (ports BASE..BASE+2, default 8080) and three workers with simulated GPUs of different sizes
# (ports BASE+10..BASE+12), data and logs in a fresh folder. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p dllm-control-plane -p dllm-worker
cp=target/release/dllm-control-plane
worker=target/release/dllm-worker
data=${DLLM_DATA:-$(mktemp -d -t dllm-cluster.XXXXXX)}
base=${DLLM_BASE_PORT:-8080}
members="1=127.0.0.1:$base,2=127.0.0.1:$((base + 1)),3=127.0.0.1:$((base + 2))"
seeds="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
for port in $base $((base + 1)) $((base + 2)) $((base + 10)) $((base + 11)) $((base + 12)); do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is taken; set DLLM_BASE_PORT to start elsewhere" >&2
    exit 1
  fi
done
pids=()
stop() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  echo "stopped; data and logs are in $data"
}
trap stop EXIT
trap 'exit 130' INT TERM
for id in 1 2 3; do
  port=$((base + id - 1))
  "$cp" --id $id --listen 127.0.0.1:$port --data-dir "$data/cp$id" \
    --initial-cluster "$members" >"$data/cp$id.log" 2>&1 &
  pids+=($!)
done
gpus=("2x81559:NVIDIA H100 80GB HBM3" "1x24576:NVIDIA L4" "4x40960:NVIDIA A100-SXM4-40GB")
for i in 0 1 2; do
  "$worker" --node-id "worker-$((i + 1))" --listen 127.0.0.1:$((base + 10 + i)) \
    --seed-nodes "$seeds" --simulate-gpus "${gpus[$i]}" >"$data/worker-$((i + 1)).log" 2>&1 &
  pids+=($!)
done
cat <<MSG
dllm: replicas on 127.0.0.1:$base, :$((base + 1)), :$((base + 2)); workers worker-1..3 on :$((base + 10))-:$((base + 12))
data and logs: $data
try:
  grpcurl -plaintext -d '{"requester_id": "me", "known_nodes": []}' 127.0.0.1:$base distributed_llm.DiscoveryService/DiscoverNodes
  grpcurl -plaintext -d '{"node_id": "worker-1"}' 127.0.0.1:$((base + 1)) distributed_llm.NodeService/GetMetrics
  grpcurl -plaintext -d '{"command": "nodes"}' 127.0.0.1:$((base + 2)) distributed_llm.TUIService/ExecuteCommand
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
echo "a process exited early; see $data/*.log" >&2
exit 1

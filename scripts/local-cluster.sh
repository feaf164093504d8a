#!/usr/bin/env bash
# Starts a local 3-replica dllm control plane on loopback (ports 8080-8082) in the foreground,
# data in a fresh folder. Ctrl-C stops every replica. Until `dllm dev` exists this is the
# quickest way to try the control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p dllm-control-plane
bin=target/release/dllm-control-plane
data=${DLLM_DATA:-$(mktemp -d -t dllm-cluster.XXXXXX)}
base=${DLLM_BASE_PORT:-8080}
members="1=127.0.0.1:$base,2=127.0.0.1:$((base + 1)),3=127.0.0.1:$((base + 2))"
for port in $base $((base + 1)) $((base + 2)); do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is taken; set DLLM_BASE_PORT to start elsewhere" >&2
    exit 1
  fi
done
pids=()
stop() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  echo "stopped; data is in $data"
}
trap stop EXIT INT TERM
for id in 1 2 3; do
  port=$((base + id - 1))
  "$bin" --id $id --listen 127.0.0.1:$port --data-dir "$data/cp$id" \
    --initial-cluster "$members" >"$data/cp$id.log" 2>&1 &
  pids+=($!)
done
cat <<MSG
dllm control plane: replicas on 127.0.0.1:$base, :$((base + 1)), :$((base + 2)); logs and data in $data
try:
  grpcurl -plaintext -d '{"node_id": "agent-1", "address": "127.0.0.1", "port": 9000, "resources": {"cpu_cores": 8, "memory_mb": 16384, "max_layers": 10}}' 127.0.0.1:$base distributed_llm.DiscoveryService/RegisterWithCluster
  grpcurl -plaintext -d '{"node_id": "agent-1"}' 127.0.0.1:$((base + 1)) distributed_llm.NodeService/GetNodeInfo
  grpcurl -plaintext 127.0.0.1:$((base + 2)) distributed_llm.AdminService/GetReplicaStatus
Ctrl-C stops the cluster.
MSG
wait -n "${pids[@]}"
echo "a replica exited; see $data/cp*.log" >&2
exit 1

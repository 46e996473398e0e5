#!/usr/bin/env bash
# A private one-machine Ray cluster with two fake GPUs, for tests and CI.
#
#   scripts/cluster/ray.sh start [DIR]  start a head; DIR/address holds its address (host:port)
#   scripts/cluster/ray.sh stop [DIR]   stop exactly that cluster (its process group), clean DIR
#
# DIR defaults to $HARNESS_RAY_DIR, else /tmp/harness-ray (the tests use the cluster recorded
# there, or start their own).
# The head runs as `ray start --head --block` in a session of its own, so every Ray process
# it starts (GCS, raylet, agents, workers) shares one process group, recorded in DIR/pgid;
# stop kills that group only. A machine-wide `ray stop` would also kill other people's Ray.
# Every port is chosen free, so several clusters can live on one machine. Auth is off
# (RAY_AUTH_MODE=disabled): clients must set the same. Uses the `ray` next to this Python
# (RAY_PYTHON, default: the python3 on PATH).
set -euo pipefail

action=${1:-}
dir=${2:-${HARNESS_RAY_DIR:-/tmp/harness-ray}}
python=${RAY_PYTHON:-python3}
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

free_ports() {  # N free TCP ports on 127.0.0.1
  "$python" - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

start() {
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [[ -f "$dir/pgid" ]] && kill -0 -- "-$(cat "$dir/pgid")" 2>/dev/null; then
    echo "a cluster from $dir is already running (pgid $(cat "$dir/pgid"))" >&2
    exit 1
  fi
  read -r gcs dash agent grpc metrics runtime node object client <<<"$(free_ports 9)"
  # Ray's socket paths must stay short (107 bytes): its temp folder lives under /tmp.
  tmp=$(mktemp -d /tmp/hray.XXXXXX)
  echo "$tmp" >"$dir/tmp"
  setsid "$python" -m ray.scripts.scripts start --head --block \
    --node-ip-address 127.0.0.1 --port "$gcs" --num-cpus 2 --num-gpus 2 \
    --disable-usage-stats --include-dashboard true --dashboard-port "$dash" \
    --dashboard-agent-listen-port "$agent" --dashboard-agent-grpc-port "$grpc" \
    --metrics-export-port "$metrics" --runtime-env-agent-port "$runtime" \
    --node-manager-port "$node" --object-manager-port "$object" \
    --ray-client-server-port "$client" --temp-dir "$tmp" \
    >"$dir/ray.log" 2>&1 </dev/null &
  echo $! >"$dir/pgid"  # setsid made it a session (and group) leader
  for _ in $(seq 120); do
    if "$python" -m ray.scripts.scripts status --address "127.0.0.1:$gcs" >/dev/null 2>&1; then
      echo "127.0.0.1:$gcs" >"$dir/address"
      echo "http://127.0.0.1:$dash" >"$dir/dashboard"
      echo "ray cluster up at 127.0.0.1:$gcs (2 CPUs, 2 fake GPUs), pgid $(cat "$dir/pgid")"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/pgid")" 2>/dev/null; then
      echo "ray start failed; its log:" >&2
      tail -20 "$dir/ray.log" >&2
      exit 1
    fi
    sleep 1
  done
  echo "ray cluster did not come up in 120 s; see $dir/ray.log" >&2
  stop
  exit 1
}

stop() {
  [[ -f "$dir/pgid" ]] || { echo "no cluster recorded in $dir" >&2; return 0; }
  pgid=$(cat "$dir/pgid")
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 20); do
    kill -0 -- "-$pgid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$pgid" 2>/dev/null || true
  [[ -f "$dir/tmp" ]] && rm -rf "$(cat "$dir/tmp")"
  rm -f "$dir/pgid" "$dir/address" "$dir/dashboard" "$dir/tmp"
  echo "ray cluster (pgid $pgid) stopped"
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;;
esac

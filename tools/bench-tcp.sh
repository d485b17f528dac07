#!/usr/bin/env bash
# TCP benchmark: ringlb against HAProxy (tcp mode) on this host, in the same run.
#
# Starts redis-server and iperf3 as backends on loopback, HAProxy with nbthread = ringlb's
# workers and an equivalent tcp-mode config, and ringlb (release build). Then, in interleaved
# rounds (ringlb, haproxy, direct, ringlb, haproxy, direct, ...), measures:
#   - redis-benchmark -t get -c 50: requests/s
#   - iperf3 single stream: Gbit/s
# and prints medians and the ratio ringlb/HAProxy as a markdown table.
#
# Usage: tools/bench-tcp.sh [rounds]     (default 3 rounds; every load is bounded in time)
# Needs: haproxy, redis-server, redis-tools, iperf3 (installed with apt-get when absent).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
WORKERS=${WORKERS:-2}
REQUESTS=${REQUESTS:-200000}   # per redis-benchmark run
SECONDS_IPERF=${SECONDS_IPERF:-5}
REDIS_PORT=26379 IPERF_PORT=25201
LB_REDIS=27000 LB_IPERF=27001 HA_REDIS=28000 HA_IPERF=28001

need() { command -v "$1" >/dev/null 2>&1; }
if ! need haproxy || ! need redis-server || ! need redis-benchmark || ! need iperf3; then
  echo "installing haproxy redis-server redis-tools iperf3 with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy redis-server redis-tools iperf3 >/dev/null
fi

cargo build --release --locked -q
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
iperf3 -s -p $IPERF_PORT -B 127.0.0.1 >"$work/iperf.log" 2>&1 &
pids+=($!)

cat >"$work/ringlb.toml" <<EOF
[runtime]
workers = $WORKERS

[[service]]
name = "redis"
listen = "127.0.0.1:$LB_REDIS"
algorithm = "round_robin"
[[service.backend]]
address = "127.0.0.1:$REDIS_PORT"

[[service]]
name = "iperf"
listen = "127.0.0.1:$LB_IPERF"
algorithm = "round_robin"
buffer_size = "64KiB"
[[service.backend]]
address = "127.0.0.1:$IPERF_PORT"
EOF
./target/release/ringlb run --config "$work/ringlb.toml" --log-level warn &
pids+=($!)

cat >"$work/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    # Each proxied connection takes two fds; stay inside a 20,000 open-files limit.
    maxconn 8000
defaults
    mode tcp
    timeout connect 3s
    timeout client 10m
    timeout server 10m
frontend redis
    bind 127.0.0.1:$HA_REDIS
    default_backend redis
backend redis
    server r1 127.0.0.1:$REDIS_PORT
frontend iperf
    bind 127.0.0.1:$HA_IPERF
    default_backend iperf
backend iperf
    server i1 127.0.0.1:$IPERF_PORT
EOF
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!)

# Wait (bounded) for every port to accept.
for port in $REDIS_PORT $IPERF_PORT $LB_REDIS $LB_IPERF $HA_REDIS $HA_IPERF; do
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && continue 2
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$port; logs in $work:" >&2
  tail -n 5 "$work"/*.log >&2
  exit 1
done

redis_rps() { # port -> requests/s
  timeout 120 redis-benchmark -h 127.0.0.1 -p "$1" -t get -c 50 -n "$REQUESTS" -q 2>/dev/null \
    | tr '\r' '\n' | awk '/GET:/ {print $2}' | tail -1
}
iperf_gbps() { # port -> Gbit/s (receiver side)
  timeout $((SECONDS_IPERF + 30)) iperf3 -c 127.0.0.1 -p "$1" -t "$SECONDS_IPERF" -J 2>/dev/null \
    | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9, 2))'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A R
for round in $(seq "$ROUNDS"); do
  for target in ringlb haproxy direct; do
    case $target in
      ringlb) rp=$LB_REDIS ip=$LB_IPERF ;;
      haproxy) rp=$HA_REDIS ip=$HA_IPERF ;;
      direct) rp=$REDIS_PORT ip=$IPERF_PORT ;;
    esac
    R[redis_$target]+="$(redis_rps $rp)"$'\n'
    R[iperf_$target]+="$(iperf_gbps $ip)"$'\n'
    echo "round $round $target done" >&2
  done
done

m() { printf '%s' "${R[$1]}" | grep -v '^$' | median; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
rr=$(m redis_ringlb) rh=$(m redis_haproxy) rd=$(m redis_direct)
ir=$(m iperf_ringlb) ih=$(m iperf_haproxy) id=$(m iperf_direct)
echo
echo "Host: $(nproc) CPUs, $(uname -r); ringlb $WORKERS workers, HAProxy $(haproxy -v | head -1 | awk '{print $3}') nbthread $WORKERS; median of $ROUNDS interleaved rounds"
echo
echo "| workload | ringlb | HAProxy | direct (no proxy) | ringlb / HAProxy |"
echo "|---|---|---|---|---|"
echo "| redis-benchmark -t get -c 50 (req/s) | $rr | $rh | $rd | $(ratio "$rr" "$rh") |"
echo "| iperf3 single stream (Gbit/s) | $ir | $ih | $id | $(ratio "$ir" "$ih") |"

#!/usr/bin/env bash
# What `send_proxy` costs: one ringlb binary run twice side by side, A without and B with a
# PROXY header on every backend connection, in interleaved rounds (A B A B ...) of `ringlb bench
# rr` (50 connections, 64 B: the header goes out once per connection, so this shows the steady
# state) and `ringlb bench connect` (a connection per request: one header per request, the
# worst case). Each build's backend is a `ringlb bench serve` echo server, B's with
# --proxy-protocol (it reads and drops the header). Prints each round, then the medians of the
# rates and of each build's CPU time per request or connection (steadier than rates on a shared
# machine) and the ratio B / A.
#
# Usage: tools/proxy-ab.sh BIN [rounds]       (default 4 rounds; every run is bounded in time)
# Environment: WORKERS (2), DURATION seconds per bench run (4), VERSION of the header ("v2" or
# "v1", default v2). Needs jq (installed with apt-get when absent).
set -euo pipefail

BIN=${1:?usage: tools/proxy-ab.sh BIN [rounds]}
ROUNDS=${2:-4}
WORKERS=${WORKERS:-2}
DURATION=${DURATION:-4}
VERSION=${VERSION:-v2}

source "$(dirname "$0")/lib.sh"
if ! need jq; then apt_install jq; fi

# Ports below the ephemeral range and apart from the other scripts': backends 21xxx, A 22000,
# B 22100.
"$BIN" bench serve --listen 127.0.0.1:21000 --threads 1 >"$work/echo-a.log" 2>&1 &
pids+=($!)
"$BIN" bench serve --listen 127.0.0.1:21001 --threads 1 --proxy-protocol >"$work/echo-b.log" 2>&1 &
pids+=($!)
declare -A PORT=([a]=22000 [b]=22100) BACKEND=([a]=21000 [b]=21001) \
  SEND=([a]="" [b]="send_proxy = \"$VERSION\"") PID=()
for v in a b; do
  cat >"$work/$v.toml" <<EOF2
[runtime]
workers = $WORKERS
[[service]]
name = "echo"
listen = "127.0.0.1:${PORT[$v]}"
${SEND[$v]}
[[service.backend]]
address = "127.0.0.1:${BACKEND[$v]}"
EOF2
  start_variant "$BIN" "$v"
done

wait_listening 21000 21001 22000 22100

results=$work/results
for r in $(seq "$ROUNDS"); do
  for v in a b; do
    bench_round "$BIN" "${PORT[$v]}" "${PID[$v]}"
    echo "round $r $v rr $rr connect $cn rr_cpu_us $rr_cpu connect_cpu_us $cn_cpu errors $rr_errors/$cn_errors" \
      | tee -a "$results"
  done
done

echo
echo "A: no header; B: send_proxy = \"$VERSION\". The CPU per unit is the steadier figure."
echo
echo "| workload | A | B | B / A |"
echo "|---|---|---|---|"
median_rows "$results" "ringlb's" 2 a b rr connect rr_cpu_us connect_cpu_us

#!/usr/bin/env bash
# Two ringlb builds side by side, in interleaved rounds (A B A B ...), on the workloads where a
# data-path change shows: rr (`ringlb bench rr`, 50 connections, 64 B), connect (a connection
# per request) and redis-benchmark -t get -c 50 through each build to one redis-server. Prints
# each round and the medians of the rates and of each build's CPU time per request or
# connection (steadier than rates on a shared machine), then each build's CPU use while idle (a
# build that spins when idle takes CPU from the other's rounds and makes the ratios
# meaningless). For A/B tests of a change before it goes into tools/compare.sh's table: build
# A, copy the binary aside, build B.
#
# Usage: tools/ab.sh BIN_A BIN_B [rounds]      (default 4 rounds; every run is bounded in time)
# Environment: WORKERS (2), DURATION seconds per bench run (4), REQUESTS per redis-benchmark run
# (150000), RUNTIME_A / RUNTIME_B: lines added to that build's [runtime] table (to compare
# settings, e.g. RUNTIME_B="pin_workers = true" with the same binary twice). Needs redis-server
# and redis-tools (installed with apt-get when absent) and jq.
set -euo pipefail

A=${1:?usage: tools/ab.sh BIN_A BIN_B [rounds]}
B=${2:?usage: tools/ab.sh BIN_A BIN_B [rounds]}
ROUNDS=${3:-4}
WORKERS=${WORKERS:-2}
DURATION=${DURATION:-4}
REQUESTS=${REQUESTS:-150000}

source "$(dirname "$0")/lib.sh"
if ! need redis-server || ! need redis-benchmark || ! need jq; then
  apt_install redis-server redis-tools jq
fi

# Ports below the ephemeral range (32768 and up), apart from compare.sh's 26xxx-29xxx:
# backends 23xxx; build A 24xxx, build B 25xxx.
"$A" bench serve --listen 127.0.0.1:23000 --threads 1 >"$work/echo.log" 2>&1 &
pids+=($!)
start_redis 23379
declare -A BASE=([a]=24000 [b]=25000) BIN=([a]=$A [b]=$B) RUNTIME=([a]=${RUNTIME_A:-} [b]=${RUNTIME_B:-}) PID=()
for v in a b; do
  {
    printf '[runtime]\nworkers = %s\n%s\n' "$WORKERS" "${RUNTIME[$v]}"
    ringlb_service echo "127.0.0.1:${BASE[$v]}" 127.0.0.1:23000
    ringlb_service redis "127.0.0.1:$(( ${BASE[$v]} + 379 ))" 127.0.0.1:23379
  } >"$work/$v.toml"
  start_variant "${BIN[$v]}" "$v"
done

# Everything listening, or stop with the log of what did not start.
wait_listening 23000 23379 24000 24379 25000 25379

results=$work/results
for r in $(seq "$ROUNDS"); do
  for v in a b; do
    port=${BASE[$v]}
    bench_round "$A" "$port" "${PID[$v]}"
    rd=$(redis-benchmark -p $((port + 379)) -t get -c 50 -n "$REQUESTS" -q 2>/dev/null \
      | tr '\r' '\n' | grep -o 'GET: [0-9.]*' | tail -1 | cut -d' ' -f2)
    rd_cpu=$(per_unit "$ticks" "$(cpu_ticks "${PID[$v]}")" "$REQUESTS")
    echo "round $r $v rr $rr connect $cn redis ${rd:-nan} rr_cpu_us $rr_cpu connect_cpu_us $cn_cpu redis_cpu_us $rd_cpu" \
      | tee -a "$results"
  done
done

echo
echo "Rates depend on what else takes the CPUs; the build's CPU time per unit much less so."
echo
echo "| workload | A | B | B / A |"
echo "|---|---|---|---|"
median_rows "$results" "build's" 2 a b rr connect redis rr_cpu_us connect_cpu_us redis_cpu_us

# A build that burns CPU while idle takes it from the other build's rounds and flatters itself:
# the ratios above mean nothing then.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A T0
for v in a b; do T0[$v]=$(ticks "${PID[$v]}"); done
sleep 2
for v in a b; do
  used=$(( $(ticks "${PID[$v]}") - ${T0[$v]} ))
  hz=$(getconf CLK_TCK)
  pct=$(( used * 100 / (2 * hz) ))
  echo "idle CPU of build ${v^^} after the runs: ${pct}% of a CPU"
  if [ "$pct" -gt 5 ]; then
    echo "WARNING: build ${v^^} uses CPU while idle; its rounds took CPU from the other build" >&2
  fi
done


#!/usr/bin/env bash
# Soak: ringlb (release build) under mixed load, faults and reloads for DURATION, then a check
# that its open fds, resident memory and tables came back to where they started.
#
# Usage: DURATION=30m tools/soak.sh        (default 30m; "90s", "45m", "1h" or plain seconds)
# Needs target/release/ringlb: build it first with `cargo build --release --locked`. This script
# builds nothing. Not part of CI: it runs for DURATION and loads the machine.
#
# Starts three TCP echo backends and one UDP echo backend (`ringlb bench serve`, one thread each)
# and ringlb with an admin API, a TCP service over the three TCP backends (health checked every
# second) and a UDP service with a small flow table (udp_max_flows = 2048). Then, in cycles of
# CYCLE seconds (default 20) until DURATION has passed, it runs bounded `ringlb bench` loads at
# once (rr with --verify, connect, stream, udp, and a UDP flood of 4,000 source ports), and
# meanwhile kills the third backend with SIGKILL and starts it again, and reloads ringlb with
# POST /reload (alternating weights, and a third service added and removed). Each cycle prints
# one line: requests and errors of each load. Errors while a backend is killed are expected and
# only reported.
#
# Printed at the start and at the end: ringlb's open fds, RSS, TCP connections and UDP flows
# active, connection budget used, and its CLOSE_WAIT sockets. It fails (exit 1) when ringlb died,
# or when, within SETTLE seconds (default 60) after the load stops: connections and flows are not
# back to 0, fds not back to the start's count + FD_TOLERANCE (default 8: spare splice pipes a
# worker may keep), any CLOSE_WAIT socket is left, or RSS is above the start's + RSS_TOLERANCE_MIB
# (default 64: buffers and allocator arenas the workers keep once warm).
#
# Ports: 127.0.0.1, BASE_PORT (default 29400) to BASE_PORT + 9.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30m}
CYCLE=${CYCLE:-20}
SETTLE=${SETTLE:-60}
FD_TOLERANCE=${FD_TOLERANCE:-8}
RSS_TOLERANCE_MIB=${RSS_TOLERANCE_MIB:-64}
BASE_PORT=${BASE_PORT:-29400}
RINGLB=${RINGLB:-${CARGO_TARGET_DIR:-target}/release/ringlb}

source tools/lib.sh

if [ ! -x "$RINGLB" ]; then
  echo "soak: $RINGLB not found; build it with: cargo build --release --locked" >&2
  exit 2
fi

# seconds TEXT: "30m", "90s", "1h" or plain seconds, as whole seconds.
seconds() {
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo $(( ${1%s} )) ;;
    *) echo $(( $1 )) ;;
  esac
}
TOTAL=$(seconds "$DURATION")
if [ "$TOTAL" -lt "$CYCLE" ]; then
  echo "soak: DURATION ($DURATION) is shorter than one cycle ($CYCLE s)" >&2
  exit 2
fi

B1=$BASE_PORT B2=$((BASE_PORT + 1)) B3=$((BASE_PORT + 2)) BU=$((BASE_PORT + 3))
LB=$((BASE_PORT + 4)) LBU=$((BASE_PORT + 5)) EXTRA=$((BASE_PORT + 6)) ADMIN=$((BASE_PORT + 7))

# serve PORT [OPTIONS...]: a bench serve backend on 127.0.0.1:PORT, stopped on exit; its pid is
# left in $served.
serve() {
  local port=$1
  shift
  "$RINGLB" bench serve --listen "127.0.0.1:$port" --threads 1 "$@" >>"$work/serve-$port.log" 2>&1 &
  served=$!
  pids+=("$served")
}

serve "$B1"
serve "$B2"
serve "$B3"
b3=$served
serve "$BU" --udp
listening "$B1" && listening "$B2" && listening "$B3" || { echo "soak: backends did not start" >&2; exit 1; }

# write_config N: the config of reload N (even: weights 1/1/1 and the extra service; odd:
# weights 3/2/1 and no extra service).
write_config() {
  local w1=1 w2=1 extra=""
  if (( $1 % 2 )); then
    w1=3 w2=2
  else
    extra="
[[service]]
name = \"extra\"
listen = \"127.0.0.1:$EXTRA\"
[[service.backend]]
address = \"127.0.0.1:$B1\""
  fi
  cat >"$work/ringlb.toml.new" <<EOF
[runtime]
workers = 2
drain_timeout = "2s"

[admin]
listen = "127.0.0.1:$ADMIN"

[[service]]
name = "tcp"
listen = "127.0.0.1:$LB"
algorithm = "least_conn"
connect_timeout = "1s"
idle_timeout = "30s"
[service.health]
kind = "tcp"
interval = "1s"
timeout = "500ms"
rise = 1
fall = 2
[[service.backend]]
address = "127.0.0.1:$B1"
weight = $w1
[[service.backend]]
address = "127.0.0.1:$B2"
weight = $w2
[[service.backend]]
address = "127.0.0.1:$B3"

[[service]]
name = "udp"
listen = "127.0.0.1:$LBU"
protocol = "udp"
udp_max_flows = 2048
udp_idle_timeout = "5s"
[[service.backend]]
address = "127.0.0.1:$BU"
$extra
EOF
  mv "$work/ringlb.toml.new" "$work/ringlb.toml"
}

write_config 0
"$RINGLB" run --config "$work/ringlb.toml" --log-level warn >"$work/ringlb.log" 2>&1 &
lb=$!
pids+=("$lb")
listening "$ADMIN" && listening "$LB" || { echo "soak: ringlb did not start" >&2; cat "$work/ringlb.log" >&2; exit 1; }

metrics() { curl -sf "http://127.0.0.1:$ADMIN/metrics"; }
# metric NAME: the sum of the samples of NAME in $work/metrics.
metric() { awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }' "$work/metrics"; }
fds() { ls "/proc/$lb/fd" | wc -l; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$lb/status"; }
close_wait() { ss -Htanp state close-wait 2>/dev/null | grep -c "pid=$lb," || true; }
# snapshot LABEL: prints ringlb's figures and leaves them in the variables s_*.
snapshot() {
  metrics >"$work/metrics"
  s_fds=$(fds)
  s_rss=$(rss_kib)
  s_conns=$(metric ringlb_service_connections_active)
  s_flows=$(metric ringlb_udp_flows_active)
  s_budget=$(metric ringlb_connection_budget_used)
  s_cw=$(close_wait)
  printf '%-6s fds %5s  rss %7s KiB  tcp active %5s  udp flows %5s  budget used %5s  close_wait %s\n' \
    "$1" "$s_fds" "$s_rss" "$s_conns" "$s_flows" "$s_budget" "$s_cw"
}

# Health checks settle before the baseline.
sleep 2
snapshot start
base_fds=$s_fds base_rss=$s_rss

# bench MODE ARGS...: one bounded load in the background, its JSON report in $work/MODE.json.
bench() {
  local mode=$1
  shift
  "$RINGLB" bench "$mode" --json --threads 1 "$@" >"$work/$mode.json" 2>>"$work/bench.log" &
  loads+=($!)
}
summary() {
  jq -r 'if .mode == "stream" then "stream \(.bytes_received / 1048576 | floor) MiB"
    else "\(.mode) \(.requests) req" end + " \(.errors_total) err"' "$work/$1.json" 2>/dev/null \
    || echo "$1 ?"
}

start=$(date +%s)
cycle=0 reloads=0 kills=0
load=$(( CYCLE - 2 ))
while (( $(date +%s) - start + CYCLE <= TOTAL )); do
  cycle=$(( cycle + 1 ))
  loads=()
  bench rr "127.0.0.1:$LB" --connections 16 -d "${load}s" --verify --timeout 2s
  bench connect "127.0.0.1:$LB" --connections 4 -d "${load}s" --timeout 2s
  bench stream "127.0.0.1:$LB" --connections 4 --bytes 512MiB -d "${load}s" --timeout 2s
  bench udp "127.0.0.1:$LBU" --connections 32 -d "${load}s" --verify --timeout 1s
  sleep $(( CYCLE / 4 ))
  # Fault: the third backend dies mid-load and comes back.
  kill -9 "$b3"
  wait "$b3" 2>/dev/null || true
  kills=$(( kills + 1 ))
  # The flood: 4,000 source ports against a 2,048-flow table, bounded by count and time.
  "$RINGLB" bench udp "127.0.0.1:$LBU" --json --threads 1 --connections 4000 -n 8000 \
    -d "$(( CYCLE / 4 ))s" --timeout 500ms >"$work/flood.json" 2>>"$work/bench.log" || true
  serve "$B3"
  b3=$served
  # Reload mid-load.
  write_config "$cycle"
  code=$(curl -s -o "$work/reload.out" -w '%{http_code}' -X POST "http://127.0.0.1:$ADMIN/reload")
  if [ "$code" != 200 ]; then
    echo "soak: reload $cycle answered $code: $(cat "$work/reload.out")" >&2
    exit 1
  fi
  reloads=$(( reloads + 1 ))
  for p in "${loads[@]}"; do wait "$p" || true; done
  if ! kill -0 "$lb" 2>/dev/null; then
    echo "soak: ringlb died in cycle $cycle" >&2
    tail -20 "$work/ringlb.log" >&2
    exit 1
  fi
  echo "cycle $cycle ($(( $(date +%s) - start )) s): $(summary rr), $(summary connect)," \
    "$(summary stream), $(summary udp), flood $(summary flood); fds $(fds), rss $(rss_kib) KiB"
done

echo "load stopped after $cycle cycles, $kills backend kills, $reloads reloads; settling (up to $SETTLE s)"
settled=0
for _ in $(seq $(( SETTLE * 2 ))); do
  metrics >"$work/metrics"
  if [ "$(metric ringlb_service_connections_active)" = 0 ] && [ "$(metric ringlb_udp_flows_active)" = 0 ] \
    && [ "$(fds)" -le $(( base_fds + FD_TOLERANCE )) ] && [ "$(close_wait)" = 0 ]; then
    settled=1
    break
  fi
  sleep 0.5
done
snapshot end

fail=0
if [ "$settled" != 1 ]; then
  echo "FAIL: within $SETTLE s: tcp active $s_conns, udp flows $s_flows (want 0), fds $s_fds" \
    "(want <= $base_fds + $FD_TOLERANCE), close_wait $s_cw (want 0)" >&2
  fail=1
fi
if [ "$s_rss" -gt $(( base_rss + RSS_TOLERANCE_MIB * 1024 )) ]; then
  echo "FAIL: RSS $s_rss KiB > start $base_rss KiB + $RSS_TOLERANCE_MIB MiB" >&2
  fail=1
fi
if [ "$(metric ringlb_config_reloads_total)" != "$reloads" ]; then
  echo "FAIL: ringlb counted $(metric ringlb_config_reloads_total) reloads of $reloads" >&2
  fail=1
fi
if [ "$fail" = 0 ]; then
  echo "PASS: fds $base_fds -> $s_fds (tolerance $FD_TOLERANCE), RSS $base_rss -> $s_rss KiB" \
    "(tolerance $RSS_TOLERANCE_MIB MiB), tables back to 0"
fi
exit "$fail"

#!/usr/bin/env bash
# ringlb against HAProxy (tcp mode) and NGINX (stream module) on this host, in the same run.
#
# One command starts everything: the backends (`ringlb bench serve` echo, sink and UDP echo,
# redis-server, iperf3), HAProxy 2.6 with nbthread = ringlb's workers, NGINX with as many worker
# processes (its own prefix, config and logs in a temp dir, `daemon off`), and ringlb (release
# build), all with equivalent configs: one backend per service, round robin, 16 KiB buffers,
# SO_REUSEPORT listeners. Then, in interleaved rounds (ringlb, haproxy, nginx, direct, ringlb,
# ...), every workload runs against every target and directly against the backend (the ceiling):
#
#   rr        ringlb bench rr, 50 persistent connections, 64-byte messages      requests/s
#   connect   ringlb bench connect, 50 concurrent, a connection per request    connections/s
#   stream    ringlb bench stream, one connection to a sink                     Gbit/s
#   p99       ringlb bench rr --rate R (open loop, below saturation)            p50/p99/p99.9, us
#             of the latency histogram merged over all rounds (`ringlb bench merge` on each
#             round's --json report), not a median of per-round p99s: every request weighs the same
#   redis     redis-benchmark -t get -c 50                                      requests/s
#   iperf3    one stream                                                        Gbit/s
#   udp       ringlb bench udp, 50 sockets, 64-byte and 1400-byte datagrams      requests/s
#             (against a `ringlb bench serve --udp` echo; NGINX: stream `listen ... udp`)
#   scale     ringlb bench rr, 64-byte messages, at 50, 500 and 5000            requests/s and
#             connections (SCALE_CONNS); proxies only, not the backend          proxy CPU/request
#             How each proxy's cost per request grows with the connections it holds. Not in the
#             default set: it adds three runs per proxy and round, about a third more time. Not
#             with p99 either: the sockets it leaves closing disturb the latency runs after it.
#             HAProxy's maxconn (8000), NGINX's worker_connections (10000 per worker) and
#             ringlb's max_connections (its 10,000 default) allow 5000 proxied connections
#             within a 20,000 open-files limit; `ringlb bench` raises its own limit if needed.
#
# and prints medians and the ratios ringlb/HAProxy and ringlb/NGINX as a markdown table (the rows
# of the workloads run; the scale workload its own table: a row per connection count), with each
# proxy's CPU time per unit of work (rr request, connection, GB streamed, redis-benchmark GET, UDP
# request: user + system ticks of the proxy's processes over the run / the units it completed).
# Then
# memory (unless IDLE_CONNS=0): each proxy holds IDLE_CONNS idle proxied connections (`ringlb
# bench idle` as the client, `bench serve` as the backend, each its own process, so that no
# process passes the 20,000 fd limit), and the proxy's memory (PSS, summed over its processes) is
# compared with its baseline.
#
# UDP: HAProxy (community) has no UDP proxy, so its UDP cells say n/a. ringlb's UDP rows are
# measured when this build serves `protocol = "udp"` (detected by starting it on a UDP config and
# loading it); otherwise they say so.
#
# Usage: tools/compare.sh [rounds]      (default 3 rounds; every load is bounded in time)
# Shortest run, e.g. the UDP rows only: DURATION=1 IDLE_CONNS=0 WORKLOADS=udp tools/compare.sh 1
# Environment: WORKERS (2), DURATION seconds per bench run (5), CLIENT_THREADS (2), RATE (req/s
# of the p99 row; default 5000: see below; the p99 row needs about 45 rounds to repeat), REQUESTS per
# redis-benchmark run (200000), SECONDS_IPERF (5), IDLE_CONNS (5000; 0 skips the memory part),
# OUT (results directory; the p99 row's reports are kept there, p99-TARGET.jsonl), WORKLOADS (a
# space-separated subset of "rr connect stream p99 redis iperf udp scale"; default all but scale;
# "udp" is both datagram sizes, "udp64" or "udp1400" one of them), SCALE_CONNS (connection counts
# of the scale workload, "50 500 5000").
# Connection scaling only: DURATION=5 IDLE_CONNS=0 WORKLOADS=scale tools/compare.sh 5
# Needs: haproxy, nginx + libnginx-mod-stream, redis-server, redis-tools, iperf3, jq (installed
# with apt-get when absent).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
WORKERS=${WORKERS:-2}
DURATION=${DURATION:-5}
CLIENT_THREADS=${CLIENT_THREADS:-2}
REQUESTS=${REQUESTS:-200000}
SECONDS_IPERF=${SECONDS_IPERF:-5}
IDLE_CONNS=${IDLE_CONNS:-5000}
SCALE_CONNS=${SCALE_CONNS:-50 500 5000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BIN=$CARGO_TARGET_DIR/release/ringlb
OUT=${OUT:-$(mktemp -d /tmp/ringlb-compare.XXXXXX)}
mkdir -p "$OUT"

# Ports: backends 26xxx; ringlb 27xxx, HAProxy 28xxx, NGINX 29xxx; same last digits per service.
declare -A BASE=([direct]=26000 [ringlb]=27000 [haproxy]=28000 [nginx]=29000)
ECHO=0 SINK=1 UDP=2 REDIS=379 IPERF=201
port() { echo $(( ${BASE[$1]} + $2 )); }   # target service -> port

source tools/lib.sh
if ! need haproxy || ! need nginx || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ] \
   || ! need redis-server || ! need redis-benchmark || ! need iperf3 || ! need jq; then
  apt_install haproxy nginx libnginx-mod-stream redis-server redis-tools iperf3 jq
fi

cargo build --release --locked -q

# --- backends (each in its own process) ---
"$BIN" bench serve --listen 127.0.0.1:$(port direct $ECHO) --threads 1 >"$work/echo.log" 2>&1 &
pids+=($!)
"$BIN" bench serve --listen 127.0.0.1:$(port direct $SINK) --threads 1 --sink >"$work/sink.log" 2>&1 &
pids+=($!)
"$BIN" bench serve --listen 127.0.0.1:$(port direct $UDP) --threads 1 --udp >"$work/udp.log" 2>&1 &
pids+=($!)
start_redis "$(port direct $REDIS)"
iperf3 -s -p $(port direct $IPERF) -B 127.0.0.1 >"$work/iperf.log" 2>&1 &
pids+=($!)

# --- ringlb ---
{
  echo "[runtime]"
  echo "workers = $WORKERS"
  for s in echo:$ECHO sink:$SINK redis:$REDIS iperf:$IPERF; do
    name=${s%%:*} off=${s##*:}
    ringlb_service "$name" "127.0.0.1:$(port ringlb "$off")" "127.0.0.1:$(port direct "$off")" \
      'algorithm = "round_robin"' 'buffer_size = "16KiB"'
  done
} >"$work/ringlb.toml"
"$BIN" run --config "$work/ringlb.toml" --log-level warn >"$work/ringlb.log" 2>&1 &
RINGLB_PID=$!
pids+=($RINGLB_PID)

# ringlb UDP: its own instance, so a build without UDP still runs every TCP row.
{
  printf '[runtime]\nworkers = %s\n' "$WORKERS"
  ringlb_service udp "127.0.0.1:$(port ringlb $UDP)" "127.0.0.1:$(port direct $UDP)" \
    'protocol = "udp"' 'algorithm = "round_robin"'
} >"$work/ringlb-udp.toml"
RINGLB_UDP="" RINGLB_UDP_PID=""
if "$BIN" check --config "$work/ringlb-udp.toml" >/dev/null 2>&1; then
  "$BIN" run --config "$work/ringlb-udp.toml" --log-level warn >"$work/ringlb-udp.log" 2>&1 &
  udp_pid=$!
  RINGLB_UDP_PID=$udp_pid
  pids+=($udp_pid)
  sleep 1
  if kill -0 "$udp_pid" 2>/dev/null \
     && "$BIN" bench udp 127.0.0.1:$(port ringlb $UDP) --connections 2 --requests 100 --duration 3s \
          --timeout 500ms --json 2>/dev/null | jq -e '.errors_total == 0' >/dev/null; then
    RINGLB_UDP=yes
  fi
fi
if [ -z "$RINGLB_UDP" ]; then
  RINGLB_UDP_NOTE=$(grep -m1 -io 'protocol udp[^"]*' "$work/ringlb-udp.log" 2>/dev/null || echo "does not serve UDP")
  echo "ringlb UDP: not measured ($RINGLB_UDP_NOTE)" >&2
fi

# --- HAProxy ---
{
  haproxy_tcp_head
  for s in echo:$ECHO sink:$SINK redis:$REDIS iperf:$IPERF; do
    name=${s%%:*} off=${s##*:}
    haproxy_listen "$name" "127.0.0.1:$(port haproxy "$off")" "127.0.0.1:$(port direct "$off")"
  done
} >"$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
HAPROXY_PID=$!
pids+=($HAPROXY_PID)

# --- NGINX (stream module; own prefix, config and logs in the temp dir) ---
mkdir -p "$work/nginx/logs"
{
  nginx_stream_head
  for s in echo:$ECHO sink:$SINK redis:$REDIS iperf:$IPERF; do
    off=${s##*:}
    echo "    server { listen 127.0.0.1:$(port nginx "$off") reuseport; proxy_pass 127.0.0.1:$(port direct "$off"); }"
  done
  echo "    server { listen 127.0.0.1:$(port nginx $UDP) udp reuseport; proxy_pass 127.0.0.1:$(port direct $UDP); proxy_timeout 10s; }"
  echo "}"
} >"$work/nginx/nginx.conf"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/logs/error.log" >"$work/nginx.log" 2>&1 &
NGINX_PID=$!
pids+=($NGINX_PID)

# Wait (bounded) for every TCP port to accept.
for t in direct ringlb haproxy nginx; do
  for off in $ECHO $SINK $REDIS $IPERF; do
    p=$(port $t $off)
    listening "$p" && continue
    echo "nothing listens on 127.0.0.1:$p ($t); logs in $work:" >&2
    tail -n 5 "$work"/*.log "$work"/nginx/logs/*.log >&2 || true
    exit 1
  done
done

# --- workloads: each prints one number ---
bench() { # mode port args... -> JSON
  timeout $((DURATION + 30)) "$BIN" bench "$1" "127.0.0.1:$2" --threads "$CLIENT_THREADS" \
    --duration "${DURATION}s" --json "${@:3}" 2>>"$OUT/bench.err" || echo '{}'
}
# proxy_pid TARGET: the process whose CPU time is the target's (ringlb-udp: ringlb's UDP instance).
proxy_pid() {
  case $1 in
    ringlb) echo "$RINGLB_PID" ;; ringlb-udp) echo "$RINGLB_UDP_PID" ;;
    haproxy) echo "$HAPROXY_PID" ;; nginx) echo "$NGINX_PID" ;;
  esac
}
# measure TARGET JQ_VALUE JQ_UNITS SCALE bench-args... -> "value cpu": the bench's value and the
# proxy's CPU time per unit (SCALE: us per unit from ticks/units), "nan" for the direct target.
# CPU time per unit depends little on what else runs on the machine, unlike rates.
measure() {
  local t=$1 value=$2 units=$3 scale=$4 pid a b json
  shift 4
  pid=$(proxy_pid "$t")
  [ -n "$pid" ] && a=$(cpu_ticks "$pid")
  json=$(bench "$@")
  echo "$json" >>"$OUT/raw.jsonl"
  [ -n "$pid" ] && b=$(cpu_ticks "$pid")
  echo "$json" | jq -r --arg t "${a:-}" --arg b "${b:-}" --argjson hz "$(getconf CLK_TCK)" --argjson scale "$scale" \
    "[($value // \"nan\"), (if \$t == \"\" or ($units // 0) == 0 then \"nan\" else ((\$b | tonumber) - (\$t | tonumber)) / \$hz * \$scale / $units | . * 100 | round / 100 end)] | @tsv"
}
w_rr()      { measure "$1" .requests_per_s .requests 1e6 rr "$(port "$1" $ECHO)" --connections 50 --size 64; }
w_connect() { measure "$1" .connections_per_s .connections_opened 1e6 connect "$(port "$1" $ECHO)" --connections 50 --size 64; }
w_stream()  { measure "$1" .sent_gbit_per_s "(.bytes_sent / 1e9)" 1e3 stream "$(port "$1" $SINK)" --connections 1; }
# p99: each round's report (with its latency histogram) goes to $OUT/p99-TARGET.jsonl, merged
# after the last round; the round's own p99 is printed for the raw log.
w_p99() {
  local json
  json=$(bench rr "$(port "$1" $ECHO)" --connections 50 --size 64 --rate "$RATE")
  echo "$json" >>"$OUT/raw.jsonl"
  if jq -e '.latency_histogram | type == "string"' >/dev/null 2>&1 <<<"$json"; then
    echo "$json" >>"$OUT/p99-$1.jsonl"
  fi
  jq -r '.latency_us.p99 // "nan"' <<<"$json"
}
# scale: rr at $2 connections, rate and proxy CPU per request; not run against the backend.
w_scale() {
  if [ "$1" = direct ]; then printf 'nan\tnan\n'; return; fi
  measure "$1" .requests_per_s .requests 1e6 rr "$(port "$1" $ECHO)" --connections "$2" --size 64
}
udp_load() { # target size -> "rate cpu" (CPU per request: one datagram each way)
  if [ "$1" = haproxy ] || { [ "$1" = ringlb ] && [ -z "$RINGLB_UDP" ]; }; then printf 'nan\tnan\n'; return; fi
  local t=$1
  [ "$t" = ringlb ] && t=ringlb-udp
  measure "$t" .requests_per_s .requests 1e6 udp "$(port "$1" $UDP)" --connections 50 --size "$2" --timeout 1s
}
w_udp64()   { udp_load "$1" 64; }
w_udp1400() { udp_load "$1" 1400; }
# redis: redis-benchmark's GET rate, and the proxy's CPU per request over its REQUESTS requests.
w_redis() {
  local pid a b rate
  pid=$(proxy_pid "$1")
  [ -n "$pid" ] && a=$(cpu_ticks "$pid")
  rate=$(timeout 120 redis-benchmark -h 127.0.0.1 -p "$(port "$1" $REDIS)" -t get -c 50 -n "$REQUESTS" -q 2>/dev/null \
    | tr '\r' '\n' | awk '/GET:/ {print $2}' | tail -1 | grep . || echo nan)
  if [ -n "$pid" ] && [ "$rate" != nan ]; then
    b=$(cpu_ticks "$pid")
    printf '%s\t%s\n' "$rate" "$(python3 -c "print(round(($b - $a) / $(getconf CLK_TCK) * 1e6 / $REQUESTS, 2))")"
  else
    printf '%s\tnan\n' "$rate"
  fi
}
w_iperf() {
  timeout $((SECONDS_IPERF + 30)) iperf3 -c 127.0.0.1 -p "$(port "$1" $IPERF)" -t "$SECONDS_IPERF" -J 2>/dev/null \
    | jq -r '.end.sum_received.bits_per_second / 1e9 * 100 | round / 100' 2>/dev/null || echo nan
}

read -ra SELECTED <<<"${WORKLOADS:-rr connect stream p99 redis iperf udp}"
WORKLOADS=()
SCALE_LEVELS=()
for w in "${SELECTED[@]}"; do
  case $w in
    udp) WORKLOADS+=(udp64 udp1400) ;;
    scale)
      for c in $SCALE_CONNS; do
        [[ $c =~ ^[1-9][0-9]*$ ]] || { echo "SCALE_CONNS: $c is not a connection count" >&2; exit 2; }
        SCALE_LEVELS+=("$c")
        WORKLOADS+=("scale$c")
      done ;;
    rr|connect|stream|p99|redis|iperf|udp64|udp1400) WORKLOADS+=("$w") ;;
    *) echo "unknown workload $w (rr connect stream p99 redis iperf udp udp64 udp1400 scale)" >&2; exit 2 ;;
  esac
done
# run_workload W TARGET: the workload's value (and CPU per unit, when it measures one).
run_workload() {
  case $1 in
    scale*) w_scale "$2" "${1#scale}" ;;
    *) "w_$1" "$2" ;;
  esac
}

# ran WORKLOAD: whether WORKLOAD is among those run.
ran() { [[ " ${WORKLOADS[*]} " == *" $1 "* ]]; }

# 5,000 req/s: far enough below saturation that the client, the backend and the proxy rarely
# wait for each other's CPU. At a quarter of the closed-loop rate (about 15,000 here) each
# round's p99 is set by that wait, and two runs of 30 rounds differed by up to 32%; at 5,000,
# two runs of 30 rounds agreed within 4% for HAProxy and 12% for ringlb (45 rounds: see the
# README).
RATE=${RATE:-5000}
if ran p99; then echo "p99 row at $RATE requests/s" >&2; fi
if ran p99 && [ ${#SCALE_LEVELS[@]} -gt 0 ]; then
  # Measured once: p99 1,885 against 450 to 735 us in runs of its own, p99.9 34 ms against 5.5.
  echo "warning: p99 and scale in one run: the thousands of sockets each scale run leaves closing" \
    "disturb the latency rows after them; measure latency in a run without scale" >&2
fi

TARGETS=(ringlb haproxy nginx direct)
declare -A R
for round in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    for w in "${WORKLOADS[@]}"; do
      read -r v c < <(run_workload "$w" "$t")
      R[${w}_$t]+="$v "
      R[${w}cpu_$t]+="${c:-nan} "
      echo "round $round $t $w $v ${c:-}" | tee -a "$OUT/raw.txt" >&2
    done
  done
done

# p99: the percentiles of each target's histograms merged over all rounds.
if ran p99; then
  for t in "${TARGETS[@]}"; do
    merged='{}'
    if [ -s "$OUT/p99-$t.jsonl" ]; then
      merged=$("$BIN" bench merge "$OUT/p99-$t.jsonl" --json 2>>"$OUT/bench.err" || echo '{}')
    fi
    read -r p50 p99 p999 n < <(jq -r '[.latency_us.p50, .latency_us.p99, .latency_us.p999, .latency_us.count] | map(. // "nan") | @tsv' <<<"$merged")
    R[p99_p50_$t]=$p50 R[p99_p99_$t]=$p99 R[p99_p999_$t]=$p999
    echo "merged p99 $t: $n latencies, p50 $p50 p99 $p99 p99.9 $p999 us" | tee -a "$OUT/raw.txt" >&2
  done
fi

# --- memory: IDLE_CONNS idle proxied connections ---
pss_kib() { # pid -> PSS in KiB of the process and its children
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0) ))
  done
  echo $total
}
declare -A MEM_BASE MEM_LOADED MEM_OPEN
MEMORY_TARGETS=(ringlb haproxy nginx)
[ "$IDLE_CONNS" -gt 0 ] || MEMORY_TARGETS=()
for t in "${MEMORY_TARGETS[@]}"; do
  case $t in ringlb) pid=$RINGLB_PID ;; haproxy) pid=$HAPROXY_PID ;; nginx) pid=$NGINX_PID ;; esac
  sleep 1
  MEM_BASE[$t]=$(pss_kib $pid)
  "$BIN" bench idle 127.0.0.1:$(port $t $ECHO) --connections "$IDLE_CONNS" --duration 60s \
    --threads "$CLIENT_THREADS" --json >"$work/idle-$t.json" 2>"$work/idle-$t.err" &
  idle_pid=$!
  for _ in $(seq 300); do grep -qs holding "$work/idle-$t.err" && break; sleep 0.1; done
  sleep 1
  MEM_LOADED[$t]=$(pss_kib $pid)
  MEM_OPEN[$t]=$(grep -o 'holding [0-9]*' "$work/idle-$t.err" | awk '{print $2}' || echo 0)
  kill "$idle_pid" 2>/dev/null || true
  wait "$idle_pid" 2>/dev/null || true
  echo "memory $t base ${MEM_BASE[$t]} KiB loaded ${MEM_LOADED[$t]} KiB open ${MEM_OPEN[$t]:-0}" | tee -a "$OUT/raw.txt" >&2
  sleep 2   # let the proxy close both sides before the next one
done

# --- report ---
ratio() { python3 -c "
a, b = '$1', '$2'
try: print(f'{float(a)/float(b):.2f}')
except Exception: print('n/a')"; }
m() { printf '%s' "${R[$1]:-}" | median; }
row() { # label key: nothing when the key's workload (for a CPU row, its own) was not run
  local w=${2%cpu}
  ran "${w%%_*}" || return 0
  local r h n d
  r=$(m "$2_ringlb") h=$(m "$2_haproxy") n=$(m "$2_nginx") d=$(m "$2_direct")
  echo "| $1 | $r | $h | $n | $d | $(ratio "$r" "$h") | $(ratio "$r" "$n") |"
}
{
echo "Host: $(nproc) CPUs ($(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}')), $(uname -r); ringlb $WORKERS workers, HAProxy $(haproxy -v | head -1 | awk '{print $3}') nbthread $WORKERS, NGINX $(nginx -v 2>&1 | awk -F/ '{print $2}') $WORKERS workers; client ringlb bench $CLIENT_THREADS threads; everything on the same $(nproc) CPUs; median of $ROUNDS interleaved rounds (latency rows: percentiles of all rounds' histograms merged), ${DURATION} s per bench run"
echo
echo "| workload | ringlb | HAProxy | NGINX | direct (no proxy) | ringlb / HAProxy | ringlb / NGINX |"
echo "|---|---|---|---|---|---|---|"
row "rr: 50 conns, 64 B (req/s)" rr
row "connect: conn per request, 50 concurrent (conn/s)" connect
row "stream: 1 conn to sink (Gbit/s)" stream
row "p50 at ${RATE:-} req/s, 50 conns, all rounds merged (us, lower is better)" p99_p50
row "p99 at ${RATE:-} req/s, 50 conns, all rounds merged (us, lower is better)" p99_p99
row "p99.9 at ${RATE:-} req/s, 50 conns, all rounds merged (us, lower is better)" p99_p999
row "redis-benchmark -t get -c 50 (req/s)" redis
row "iperf3 single stream (Gbit/s)" iperf
row "udp: 50 sockets, 64 B (req/s)" udp64
row "udp: 50 sockets, 1400 B (req/s)" udp1400
row "proxy CPU per rr request (us, lower is better)" rrcpu
row "proxy CPU per connect-mode connection (us, lower is better)" connectcpu
row "proxy CPU per GB streamed (ms, lower is better)" streamcpu
row "proxy CPU per redis-benchmark GET (us, lower is better)" rediscpu
row "proxy CPU per UDP request, 64 B (us, lower is better)" udp64cpu
row "proxy CPU per UDP request, 1400 B (us, lower is better)" udp1400cpu
echo
if [ -z "$RINGLB_UDP" ]; then
  echo "ringlb UDP: not measured, this build: $RINGLB_UDP_NOTE. HAProxy has no UDP proxy."
else
  echo "HAProxy (community) has no UDP proxy."
fi
if [ "${#SCALE_LEVELS[@]}" -gt 0 ]; then
  echo
  echo "| rr, 64 B, connections | ringlb req/s | ringlb CPU per req (us) | HAProxy req/s | HAProxy CPU per req (us) | CPU ringlb / HAProxy | NGINX req/s | NGINX CPU per req (us) |"
  echo "|---|---|---|---|---|---|---|---|"
  for c in "${SCALE_LEVELS[@]}"; do
    rc=$(m "scale${c}cpu_ringlb") hc=$(m "scale${c}cpu_haproxy")
    echo "| $c | $(m "scale${c}_ringlb") | $rc | $(m "scale${c}_haproxy") | $hc | $(ratio "$rc" "$hc") | $(m "scale${c}_nginx") | $(m "scale${c}cpu_nginx") |"
  done
fi
if [ "$IDLE_CONNS" -gt 0 ]; then
  echo
  echo "| memory, $IDLE_CONNS idle proxied connections | ringlb | HAProxy | NGINX |"
  echo "|---|---|---|---|"
  echo "| PSS before (MiB) | $((MEM_BASE[ringlb] / 1024)) | $((MEM_BASE[haproxy] / 1024)) | $((MEM_BASE[nginx] / 1024)) |"
  echo "| PSS holding them (MiB) | $((MEM_LOADED[ringlb] / 1024)) | $((MEM_LOADED[haproxy] / 1024)) | $((MEM_LOADED[nginx] / 1024)) |"
  per() { python3 -c "print(f'{($2 - $1) / max(1, $3):.1f}')"; }
  echo "| KiB per connection | $(per "${MEM_BASE[ringlb]}" "${MEM_LOADED[ringlb]}" "${MEM_OPEN[ringlb]:-0}") | $(per "${MEM_BASE[haproxy]}" "${MEM_LOADED[haproxy]}" "${MEM_OPEN[haproxy]:-0}") | $(per "${MEM_BASE[nginx]}" "${MEM_LOADED[nginx]}" "${MEM_OPEN[nginx]:-0}") |"
  echo "| connections held | ${MEM_OPEN[ringlb]:-0} | ${MEM_OPEN[haproxy]:-0} | ${MEM_OPEN[nginx]:-0} |"
fi
} | tee "$OUT/table.md"
echo >&2
echo "raw values and table in $OUT" >&2

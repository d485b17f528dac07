#!/usr/bin/env bash
# Kernel round trips per unit of work: ringlb against HAProxy (TCP) and NGINX (UDP).
#
# Rates and CPU times on a shared machine move with the neighbours; syscall counts per request
# do not. For each proxy and each workload this runs a fixed number of units through the proxy
# (to `ringlb bench serve` echo backends on loopback) and counts, on the proxy process only:
#   - every system call by name (`perf trace -s` on the proxy's threads, summed over them),
#     with how many of them failed (e.g. an accept that found no connection: EAGAIN);
#   - io_uring requests submitted, by opcode (tracepoint io_uring:io_uring_submit_req): ringlb
#     submits most of its I/O as requests batched into io_uring_enter calls, so a request is
#     the comparable unit to HAProxy's recv/send syscalls;
#   - io_uring internal poll arms (io_uring:io_uring_poll_arm: a request that found its socket
#     not ready and waits for readiness inside the kernel) and context switches.
# Only the threads the proxy has when counting begins are counted (the script warns when that
# set changed during a run); io_uring's kernel workers (iou-wrk) make no system calls.
# It prints them per unit (per rr request, per connect-mode connection, per UDP request) side
# by side, as a markdown table.
#
#   rr        ringlb bench rr, 50 persistent connections, 64 B, REQUESTS requests
#   connect   ringlb bench connect, CONNECT_CONCURRENCY (50) concurrent, a new connection per
#             request, CONNS connections
#   udp       ringlb bench udp, 50 sockets, 64 B, UDP_REQUESTS requests (ringlb and NGINX only:
#             HAProxy community has no UDP proxy)
#
# Usage: tools/syscalls.sh RINGLB [OTHER_RINGLB...]
#   RINGLB is a ringlb release binary: it is the client and the backends, and the first proxy;
#   each OTHER_RINGLB (e.g. an older build) is counted as one more proxy, with the same config.
# Environment: REQUESTS (20000), CONNS (5000), CONNECT_CONCURRENCY (50), UDP_REQUESTS (20000),
#   WORKERS (2: ringlb workers, HAProxy nbthread, NGINX worker processes), WORKLOADS (subset of
#   "rr connect udp"; default all), TARGETS (subset of "ringlb haproxy nginx"; default all), OUT
#   (results directory). Example, the connect row at one connection at a time, ringlb's build
#   against an older one and HAProxy:
#   CONNECT_CONCURRENCY=1 WORKLOADS=connect TARGETS="ringlb haproxy" \
#     tools/syscalls.sh target/release/ringlb /path/to/older/ringlb
# Runs in a network namespace of its own (`unshare --net`), so it needs root.
# Needs: perf (with tracepoints: run as root), haproxy, nginx + libnginx-mod-stream, jq.
# Every load is bounded in count and time (timeout).
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 1 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
# A network namespace of its own (loopback only, removed when the script exits): the fixed
# ports below cannot collide with anything else running on this host.
if [ -z "${SYSCALLS_NETNS:-}" ]; then
  exec unshare --net env SYSCALLS_NETNS=1 bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi
BIN=$(realpath "$1")
BINS=()
for b in "$@"; do BINS+=("$(realpath "$b")"); done
REQUESTS=${REQUESTS:-20000}
CONNS=${CONNS:-5000}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-50}
UDP_REQUESTS=${UDP_REQUESTS:-20000}
WORKERS=${WORKERS:-2}
read -ra WORKLOADS <<<"${WORKLOADS:-rr connect udp}"
read -ra WANT <<<"${TARGETS:-ringlb haproxy nginx}"
OUT=${OUT:-$(mktemp -d /tmp/ringlb-syscalls.XXXXXX)}
mkdir -p "$OUT"

source tools/lib.sh
if ! need perf || ! need haproxy || ! need nginx || ! need jq \
   || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  apt_install linux-perf haproxy nginx libnginx-mod-stream jq
fi

wants() { [[ " ${WANT[*]} " == *" $1 "* ]]; }

# Ports: backends 36000 (echo) and 36002 (UDP echo); ringlb binary i at 37000 + 100 i;
# HAProxy 38000; NGINX 39000.
ECHO=36000 UDP=36002
"$BIN" bench serve --listen 127.0.0.1:$ECHO --threads 1 >"$work/echo.log" 2>&1 &
pids+=($!)
"$BIN" bench serve --listen 127.0.0.1:$UDP --threads 1 --udp >"$work/udp.log" 2>&1 &
pids+=($!)

# Targets: name, pid, TCP port, UDP port ("" when the target does not proxy UDP).
NAMES=()
declare -A PID TCP_PORT UDP_PORT
if wants ringlb; then
  for i in "${!BINS[@]}"; do
    name="ringlb"
    [ ${#BINS[@]} -gt 1 ] && name="ringlb:$(basename "${BINS[$i]}")"
    base=$((37000 + 100 * i))
    {
      printf '[runtime]\nworkers = %s\n' "$WORKERS"
      ringlb_service echo "127.0.0.1:$base" "127.0.0.1:$ECHO" \
        'algorithm = "round_robin"' 'buffer_size = "16KiB"'
      ringlb_service udp "127.0.0.1:$((base + 2))" "127.0.0.1:$UDP" \
        'protocol = "udp"' 'algorithm = "round_robin"'
    } >"$work/ringlb-$i.toml"
    "${BINS[$i]}" run --config "$work/ringlb-$i.toml" --log-level warn >"$work/ringlb-$i.log" 2>&1 &
    PID[$name]=$!
    pids+=($!)
    TCP_PORT[$name]=$base UDP_PORT[$name]=$((base + 2))
    NAMES+=("$name")
  done
fi
if wants haproxy; then
  { haproxy_tcp_head; haproxy_listen echo 127.0.0.1:38000 "127.0.0.1:$ECHO"; } >"$work/haproxy.cfg"
  haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
  PID[haproxy]=$!
  pids+=($!)
  TCP_PORT[haproxy]=38000 UDP_PORT[haproxy]=""
  NAMES+=(haproxy)
fi
if wants nginx; then
  mkdir -p "$work/nginx/logs"
  { nginx_stream_head; cat <<EOF
    server { listen 127.0.0.1:39000 reuseport; proxy_pass 127.0.0.1:$ECHO; }
    server { listen 127.0.0.1:39002 udp reuseport; proxy_pass 127.0.0.1:$UDP; proxy_timeout 10s; }
}
EOF
  } >"$work/nginx/nginx.conf"
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/logs/error.log" \
    >"$work/nginx.log" 2>&1 &
  PID[nginx]=$!
  pids+=($!)
  TCP_PORT[nginx]=39000 UDP_PORT[nginx]=39002
  NAMES+=(nginx)
fi

listening $ECHO || { echo "the echo backend did not start" >&2; exit 1; }
for n in "${NAMES[@]}"; do
  listening "${TCP_PORT[$n]}" && continue
  echo "$n does not listen on ${TCP_PORT[$n]}; logs in $work:" >&2
  tail -n 5 "$work"/*.log >&2 || true
  exit 1
done
sleep 1   # let the proxies settle (worker start, first health checks)

# tids PID: the threads of the process and of its children (NGINX workers, HAProxy's master).
tids() {
  local p
  for p in "$1" $(pgrep -P "$1" || true); do ls "/proc/$p/task"; done | paste -sd,
}

# count NAME WORKLOAD bench-args...: runs the bench against the target while counting on the
# proxy; writes $OUT/NAME.WORKLOAD.{json,trace,stat,ops}.
count() {
  local name=$1 wl=$2 f="$OUT/${1//[:\/]/_}.$2" t tp sp rp
  shift 2
  t=$(tids "${PID[$name]}")
  perf trace -s -t "$t" -o "$f.trace" >/dev/null 2>&1 &
  tp=$!
  perf stat -x, -o "$f.stat" -e context-switches -e io_uring:io_uring_submit_req \
    -e io_uring:io_uring_poll_arm -t "$t" >/dev/null 2>&1 &
  sp=$!
  perf record -q -e io_uring:io_uring_submit_req -t "$t" -o "$f.data" >/dev/null 2>&1 &
  rp=$!
  sleep 1   # attached
  timeout 120 "$BIN" bench "$@" --json >"$f.json" 2>>"$OUT/bench.err" || echo '{}' >"$f.json"
  kill -INT "$tp" "$sp" "$rp" 2>/dev/null || true
  wait "$tp" "$sp" "$rp" 2>/dev/null || true
  # Only the threads present when counting began are counted.
  [ "$(tids "${PID[$name]}")" = "$t" ] \
    || echo "warning: $name started or ended threads during the $wl run: its counts may be short" >&2
  perf script -i "$f.data" -F trace 2>/dev/null | grep -o 'opcode [A-Z_]*' | awk '{print $2}' \
    | sort | uniq -c >"$f.ops" || true
  rm -f "$f.data"
}

# counts NAME WORKLOAD: "key count" lines: each syscall (and "syscall:NAME:errors"), each
# io_uring opcode ("uring:OPCODE"), the perf stat events, and "units".
counts() {
  local f="$OUT/${1//[:\/]/_}.$2" units
  case $2 in
    connect) units=$(jq -r '.connections_opened // 0' "$f.json") ;;
    *) units=$(jq -r '.requests // 0' "$f.json") ;;
  esac
  echo "units $units"
  # perf trace -s: one table per thread, rows "name calls errors total ...".
  awk '$1 ~ /^[a-z_0-9]+$/ && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ && NF >= 8 {
         c[$1] += $2; e[$1] += $3 }
       END { for (k in c) { print "syscall:" k, c[k]; if (e[k]) print "syscall:" k ":errors", e[k] } }' \
    "$f.trace"
  awk '{print "uring:" $2, $1}' "$f.ops"
  awk -F, '$1 ~ /^[0-9]+$/ {sub(/^io_uring:io_uring_/, "", $3); print $3, $1}' "$f.stat"
}

for wl in "${WORKLOADS[@]}"; do
  for n in "${NAMES[@]}"; do
    case $wl in
      rr) count "$n" rr rr "127.0.0.1:${TCP_PORT[$n]}" --connections 50 --size 64 \
            --requests "$REQUESTS" --duration 60s ;;
      connect) count "$n" connect connect "127.0.0.1:${TCP_PORT[$n]}" --connections "$CONNECT_CONCURRENCY" \
            --size 64 --requests "$CONNS" --duration 60s ;;
      udp) [ -n "${UDP_PORT[$n]}" ] || continue
           count "$n" udp udp "127.0.0.1:${UDP_PORT[$n]}" --connections 50 --size 64 \
            --requests "$UDP_REQUESTS" --duration 60s --timeout 1s ;;
      *) echo "unknown workload $wl (rr connect udp)" >&2; exit 2 ;;
    esac
    counts "$n" "$wl" >"$OUT/${n//[:\/]/_}.$wl.counts"
    echo "counted $n $wl: $(head -1 "$OUT/${n//[:\/]/_}.$wl.counts")" >&2
  done
done

# --- report: one table per workload, a row per syscall / opcode / event, per unit ---
unit_of() { case $1 in connect) echo connection ;; *) echo request ;; esac; }
for wl in "${WORKLOADS[@]}"; do
  cols=()
  for n in "${NAMES[@]}"; do
    [ -s "$OUT/${n//[:\/]/_}.$wl.counts" ] && cols+=("$n")
  done
  [ ${#cols[@]} -gt 0 ] || continue
  echo
  extra=""
  [ "$wl" = connect ] && extra=", $CONNECT_CONCURRENCY concurrent"
  echo "### $wl: per $(unit_of "$wl") (proxy process only; ${WORKERS} workers/threads$extra)"
  echo
  python3 - "$OUT" "$wl" "${cols[@]}" <<'EOF'
import sys
out, wl, cols = sys.argv[1], sys.argv[2], sys.argv[3:]
data = {}
for c in cols:
    d = {}
    for line in open(f"{out}/{c.replace(':', '_').replace('/', '_')}.{wl}.counts"):
        k, v = line.rsplit(None, 1)
        d[k] = d.get(k, 0) + float(v)
    data[c] = d
units = {c: data[c].get("units", 0) for c in cols}
keys = sorted({k for d in data.values() for k in d if k != "units"})
def per(c, k):
    u = units[c]
    return data[c].get(k, 0) / u if u else float("nan")
def total(c, prefix, errors=False):
    return sum(v for k, v in data[c].items()
               if k.startswith(prefix) and k.endswith(":errors") == errors)
print("| per unit | " + " | ".join(cols) + " |")
print("|---|" + "---|" * len(cols))
print("| units counted | " + " | ".join(f"{units[c]:.0f}" for c in cols) + " |")
def row(label, vals):
    if any(abs(v) >= 0.005 for v in vals):
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
for k in keys:
    if k.startswith("syscall:"):
        row(k[len("syscall:"):].replace(":errors", " (failed)"), [per(c, k) for c in cols])
row("**all syscalls**", [total(c, "syscall:") / units[c] if units[c] else float("nan") for c in cols])
for k in keys:
    if k.startswith("uring:"):
        row("io_uring " + k[len("uring:"):] + " (SQE)", [per(c, k) for c in cols])
row("**all io_uring SQEs**", [per(c, "submit_req") for c in cols])
row("io_uring poll arms (in-kernel wait)", [per(c, "poll_arm") for c in cols])
row("**syscalls + SQEs**", [(total(c, "syscall:") + data[c].get("submit_req", 0)) / units[c]
                            if units[c] else float("nan") for c in cols])
row("context switches", [per(c, "context-switches") for c in cols])
EOF
done
echo
echo "Raw counts, perf trace summaries and bench JSON in $OUT"

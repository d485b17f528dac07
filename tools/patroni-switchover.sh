#!/usr/bin/env bash
# Write unavailability during Patroni switchovers and node losses, ringlb against HAProxy 2.6
# with the Patroni recipe: one Patroni cluster (etcd and two nodes on 127.0.0.11 and
# 127.0.0.12), ringlb (http check OPTIONS /primary, interval 1s, fast_interval 100ms, fall 2,
# rise 2), HAProxy with the same probe settings (inter 1s fastinter 100ms fall 2 rise 2) and
# HAProxy with the recipe's own (inter 3s fall 3 rise 2), a writer through each inserting a row
# every 10 ms. For each proxy and kind of event: the median and worst window from the first
# failed write to the first write acknowledged by the new primary, the failed writes, the writes
# a demoted node acknowledged (must be 0), and the median time from the new primary's first 200
# on /primary to that first acknowledged write.
#
# Needs root, Debian's etcd-server, patroni, python3-etcd, postgresql and haproxy (installed
# when missing). Not part of CI (several minutes; run it on a quiet machine).
#
# Usage: tools/patroni-switchover.sh [SWITCHOVERS] [NODE_LOSSES]   (defaults 10 and 5)
# RINGLB_BENCH_PROFILE=dev runs a debug build (a quick check of the script itself); the figures
# are taken with the default, release.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/lib.sh
switchovers=${1:-10}
losses=${2:-5}
profile=${RINGLB_BENCH_PROFILE:-release}

missing=()
need etcd || missing+=(etcd-server)
need patroni || missing+=(patroni python3-etcd)
need haproxy || missing+=(haproxy)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  # The packaged services must not start on their default ports.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
  fi
  apt_install "${missing[@]}"
fi

out="$work/run.log"
RINGLB_PATRONI_SWITCHOVERS=$switchovers RINGLB_PATRONI_LOSSES=$losses \
  cargo test --locked --profile "$profile" --test patroni_switchover -- --ignored --exact switchover_windows \
  --nocapture >"$out" 2>&1 || {
  cat "$out" >&2
  exit 1
}
# Fields: event N KIND proxy P window_ms W failed F demoted D after200_ms A
grep '^event ' "$out" >"$work/events" || true
if [ ! -s "$work/events" ]; then
  echo "no events ran" >&2
  cat "$out" >&2
  exit 1
fi

echo "$switchovers switchovers, $losses node losses"
echo
echo "| event | proxy | events | median window | worst window | failed writes (total) | writes a demoted node took | median first write after /primary 200 |"
echo "|---|---|---|---|---|---|---|---|"
for kind in switchover loss; do
  for proxy in ringlb haproxy-fastinter haproxy-recipe; do
    rows=$(awk -v k="$kind" -v p="$proxy" '$3 == k && $5 == p' "$work/events")
    [ -n "$rows" ] || continue
    n=$(wc -l <<<"$rows")
    printf '| %s | %s | %d | %s ms | %s ms | %s | %s | %s ms |\n' "$kind" "$proxy" "$n" \
      "$(awk '{print $7}' <<<"$rows" | median)" \
      "$(awk '{print $7}' <<<"$rows" | sort -g | tail -1)" \
      "$(awk '{t += $9} END {print t}' <<<"$rows")" \
      "$(awk '{t += $11} END {print t}' <<<"$rows")" \
      "$(awk '{print $13}' <<<"$rows" | median)"
  done
done

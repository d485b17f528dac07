#!/usr/bin/env bash
# Failover windows of a keepalived pair of ringlb hosts (dist/ha/), in network namespaces with
# real keepalived: for advert_int 1 s and 0.2 s, ROUNDS failovers each way (ringlb killed on the
# host holding the virtual address), then the median and worst window (kill to the first
# client connection served by the other host) and the connect failures meanwhile.
#
# Needs root, iproute2 and keepalived. Not part of CI (several minutes).
#
# Usage: tools/ha-failover.sh [ROUNDS]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "| advert_int | failovers | median window | worst window | connect failures (median / worst / total) |"
echo "|---|---|---|---|---|"
for advert in 1 0.2; do
    RINGLB_HA_ROUNDS=$rounds RINGLB_HA_ADVERT=$advert \
        cargo test --locked --test ha -- --ignored --exact failover_rounds --nocapture >"$out" 2>&1 || {
        cat "$out" >&2
        exit 1
    }
    grep '^round ' "$out" >"$out.rounds" || true
    n=$(wc -l <"$out.rounds")
    if [ "$n" -eq 0 ]; then
        echo "no failover rounds ran" >&2
        exit 1
    fi
    # Fields: round N advert_int A X->Y window_ms W failures F
    windows=$(awk '{ print $7 }' "$out.rounds" | sort -n)
    failures=$(awk '{ print $9 }' "$out.rounds" | sort -n)
    median() { awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    printf '| %s s | %d | %s ms | %s ms | %s / %s / %s |\n' "$advert" "$n" \
        "$(median <<<"$windows")" "$(tail -1 <<<"$windows")" \
        "$(median <<<"$failures")" "$(tail -1 <<<"$failures")" \
        "$(awk '{ t += $1 } END { print t }' <<<"$failures")"
    rm -f "$out.rounds"
done

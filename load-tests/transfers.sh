#!/usr/bin/env bash
# Cross-shard transfers through the gateway, closed loop, with wrk.
#
#   load-tests/transfers.sh [seconds] [connections...]
#
# Needs a running cluster (FAULTLINE_RELEASE=1 ./faultline run) and wrk
# (apt-get install wrk); with DATABASE_URL set and psql installed, the
# database is vacuumed before each run. Opens 64 accounts with large balances, keeps the
# pairs whose accounts live on different shards, and runs wrk once per
# connection count; every request is a new transfer with its own
# Idempotency-Key. A closed loop measures capacity, not latency at a given
# rate: the open-model generator of the load-test issue does that.
set -euo pipefail
url=${GATEWAY:-http://127.0.0.1:8080}
seconds=${1:-15}
shift || true
connections=("${@:-64}")
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

run=$(date +%s)
script=$(mktemp --suffix .lua)
trap 'rm -f "$script"' EXIT
ids=() shards=()
for i in $(seq 0 63); do
    id="load-$run-$i"
    answer=$(curl -fsS "$url/v1/accounts" -d "{\"id\":\"$id\",\"balance\":1000000000000}")
    ids+=("$id")
    shards+=("$(sed -E 's/.*"shard":([0-9]+).*/\1/' <<<"$answer")")
done
{
    echo "local run = \"$run\""
    echo "local candidates = {"
    for a in "${!ids[@]}"; do
        for b in "${!ids[@]}"; do
            [[ "${shards[$a]}" != "${shards[$b]}" ]] && echo "  {\"${ids[$a]}\", \"${ids[$b]}\"},"
        done
    done
    echo "}"
    cat <<'LUA'
local threads = 0
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end
local sent = 0
local round = ""
function init(args)
  round = args[1] or ""
end
function request()
  sent = sent + 1
  local pair = candidates[math.random(#candidates)]
  local body = string.format('{"from":"%s","to":"%s","amount":1}', pair[1], pair[2])
  local key = string.format("%s-%s-%d-%d", run, round, thread_id, sent)
  return wrk.format("POST", "/v1/transfers",
    { ["Content-Type"] = "application/json", ["Idempotency-Key"] = key }, body)
end
LUA
} > "$script"
for c in "${connections[@]}"; do
    # Each run leaves tens of thousands of dead row versions. Where
    # autovacuum is off (as on the development machines), the next run
    # would pay for them; vacuum first so every run starts alike.
    if [[ -n "${DATABASE_URL:-}" ]] && command -v psql >/dev/null; then
        psql "$DATABASE_URL" -qc "VACUUM ANALYZE"
    fi
    echo "== $c connections, ${seconds}s: cross-shard transfers =="
    wrk -t2 -c"$c" -d"${seconds}s" --latency -s "$script" "$url" -- "$c"
done

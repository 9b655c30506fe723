#!/usr/bin/env bash
# Side-by-side throughput of nginx (round-robin proxy to three upstreams)
# and Faultline's full path (gateway -> load-balancer -> worker), back to
# back in one run, with the same wrk settings. A stopgap until the load
# generator of issue 6; needs wrk, nginx and nats-server on PATH and a
# release build (cargo build --release --workspace --bins).
#
#   load-tests/quick-compare.sh [seconds] [gateway-http-workers]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
http_workers=${2:-0}
bin=target/release
work=$(mktemp -d -t faultline-compare.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -fs "$1" >/dev/null 2>&1 && return; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
measure() { # name, wrk args...
    local name=$1; shift
    wrk -t2 -c64 -d"${secs}s" --latency "$@" > "$work/$name.txt" 2>&1
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' "$work/$name.txt")
    p50=$(awk '$1 == "50%" {print $2}' "$work/$name.txt")
    p99=$(awk '$1 == "99%" {print $2}' "$work/$name.txt")
    echo "$name $rps $p50 $p99"
}

# Baseline: nginx.
mkdir -p "$work/nginx"
nginx -p "$work/nginx" -c "$PWD/load-tests/nginx-baseline.conf" > "$work/nginx.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:18090/
nginx_line=$(measure nginx http://127.0.0.1:18090/)
kill "${pids[@]}"; wait 2>/dev/null || true; pids=()

# Faultline on a private nats-server.
nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/js" > "$work/nats.log" 2>&1 &
pids+=($!)
export NATS_SERVERS=nats://127.0.0.1:$nats_port RUST_LOG=warn
for i in 1 2 3; do "$bin/worker" --id "w$i" --admin-addr "127.0.0.1:$(free_port)" & pids+=($!); done
for i in 1 2; do "$bin/load-balancer" --id "lb$i" --admin-addr "127.0.0.1:$(free_port)" & pids+=($!); done
http_port=$(free_port)
"$bin/gateway" --http-addr "127.0.0.1:$http_port" --http-workers "$http_workers" & pids+=($!)
wait_http "http://127.0.0.1:$http_port/ready"
# Load-balancers join their queue group once they have heard the workers:
# wait for a call to succeed, then for both replicas to route to all three.
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$http_port/v1/call" -d '{"op":"echo","message":"warm-up"}' >/dev/null && break
    sleep 0.1
done
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$http_port/v1/cluster" | python3 -c '
import json, sys
view = json.load(sys.stdin)
lbs = view["load_balancers"]
sys.exit(0 if len(lbs) == 2 and all(len(lb["workers"]) == 3 for lb in lbs) else 1)' && break
    sleep 0.1
done
faultline_line=$(measure faultline -s load-tests/post-echo.lua "http://127.0.0.1:$http_port/v1/call")

printf '%-10s %12s %10s %10s\n' path req/s p50 p99
printf '%-10s %12s %10s %10s\n' $nginx_line
printf '%-10s %12s %10s %10s\n' $faultline_line
read -r _ n_rps _ _ <<<"$nginx_line"
read -r _ f_rps _ _ <<<"$faultline_line"
python3 -c "print(f'throughput ratio faultline/nginx: {float($f_rps)/float($n_rps):.2f}x')"

#!/usr/bin/env bash
# CPU time per call of the full path, a steadier figure than throughput on
# a machine whose speed drifts: starts a private nats-server, three
# workers, two load-balancers and a gateway from BIN_DIR, offers 1500
# echo calls a second for 10 s (open model, after 3 s of warm-up), and
# reads the CPU ticks each process spent meanwhile.
#
#   load-tests/cpu-per-call.sh BIN_DIR LABEL [VARIABLE=VALUE...]
#
# The variables go to every service. Two builds (or two settings) compare
# by running the script alternately, a few times each, for example the
# cost of tracing with every span exported to an OTLP receiver:
#
#   load-tests/cpu-per-call.sh target/release "no exporter"
#   load-tests/cpu-per-call.sh target/release "OTLP" OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318
#
# Needs nats-server, curl, python3 and target/release/faultline-load.
set -euo pipefail
cd "$(dirname "$0")/.."
(($# >= 2)) || { sed -n '2,17p' "$0"; exit 2; }
bin=$1 label=$2
shift 2
generator=target/release/faultline-load
[[ -x $generator ]] || { echo "build it first: cargo build --release -p faultline-load" >&2; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base=$((33000 + RANDOM % 1500 * 20))
for p in $(seq "$base" $((base + 25))); do port_free "$p" || { echo "port $p is taken; run again" >&2; exit 1; }; done

dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
nats-server -a 127.0.0.1 -p "$base" -js -sd "$dir/js" >"$dir/nats.log" 2>&1 &
pids+=($!)
nats=nats://127.0.0.1:$base
names=()
start() { # NAME BINARY ARGS...
    local name=$1 binary=$2
    shift 2
    env "${vars[@]}" "$bin/$binary" --nats-servers "$nats" "$@" >"$dir/$name.log" 2>&1 &
    pids+=($!)
    names+=("$name")
}
vars=("$@")
((${#vars[@]})) || vars=(FAULTLINE_CPU_PER_CALL=1)
for i in 1 2 3; do start "worker-$i" worker --id "worker-$i" --admin-addr "127.0.0.1:$((base + 10 + i))"; done
for i in 1 2; do start "lb-$i" load-balancer --id "lb-$i" --admin-addr "127.0.0.1:$((base + 20 + i))"; done
start gateway gateway --id gateway-1 --http-addr "127.0.0.1:$((base + 1))" --http-workers 2
url=http://127.0.0.1:$((base + 1))/v1/call
for _ in $(seq 100); do curl -sf "$url" -d '{"op":"echo","message":"x"}' >/dev/null && break; sleep 0.1; done
sleep 2

load() { "$generator" http "$url" --rate "$1" --seconds "$2" --connections 64 --body '{"op":"echo","message":"hello"}' 2>/dev/null; }
load 1000 3 >/dev/null
ticks() { for p in "${pids[@]}"; do read -r -a stat <"/proc/$p/stat"; echo -n "$((stat[13] + stat[14])) "; done; }
read -r -a before <<<"$(ticks)"
summary=$(load 1500 10)
read -r -a after <<<"$(ticks)"
ok=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])' <<<"$summary")
hz=$(getconf CLK_TCK)
python3 - "$label" "$ok" "$hz" "${before[*]}" "${after[*]}" "nats-server ${names[*]}" <<'EOF'
import sys
label, ok, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before, after, names = (a.split() for a in sys.argv[4:7])
per = [(int(a) - int(b)) * 1e6 / hz / ok for a, b in zip(after, before)]
print(f"{label}: {sum(per):.0f} us of CPU per call ({ok} calls answered 2xx)")
print("  " + ", ".join(f"{n} {p:.0f}" for n, p in zip(names, per)))
EOF

#!/usr/bin/env bash
# What `docker compose --profile load run --rm load` runs against GATEWAY:
# echo calls through the whole request path in the open model at
# LOAD_RATE per second (faultline-load prints the figures as JSON and
# draws /tmp/calls.svg), then cross-shard transfers in a closed loop over
# 64 connections, checked afterwards for the bank's invariant, each for
# LOAD_SECONDS. The scenarios with baselines in the same run need the
# processes on one machine: see README.md here.
set -euo pipefail
seconds=${LOAD_SECONDS:-30}
rate=${LOAD_RATE:-2000}
url=${GATEWAY:-http://gateway:8080}
echo "== echo calls, ${rate}/s for ${seconds} s (open model)"
faultline-load http "$url/v1/call" --rate "$rate" --seconds "$seconds" \
    --body '{"op":"echo","message":"hello"}' --svg /tmp/calls.svg
echo "== cross-shard transfers, 64 connections, ${seconds} s (closed loop)"
faultline-load transfers "$url" --seconds "$seconds" --connections 64

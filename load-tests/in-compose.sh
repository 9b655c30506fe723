#!/usr/bin/env bash
# What `docker compose --profile load run --rm load` runs: echo calls
# through the whole request path, then cross-shard transfers, each for
# LOAD_SECONDS, against GATEWAY. Ratios against a baseline need the
# side-by-side scripts beside this one (see README.md here).
set -euo pipefail
here=$(dirname "$0")
seconds=${LOAD_SECONDS:-30}
url=${GATEWAY:-http://gateway:8080}
echo "== echo calls, 64 connections, ${seconds} s"
wrk -t2 -c64 -d"${seconds}s" --latency -s "$here/post-echo.lua" "$url/v1/call"
echo "== cross-shard transfers, 64 connections, ${seconds} s"
GATEWAY=$url "$here/transfers.sh" "$seconds" 64

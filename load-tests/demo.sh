# The scripted tour `./faultline demo` runs once the system is up (this file
# is sourced by ./faultline, which provides start_service, service_pid,
# service_cmd, gateway_url, admin_url and $work). It injects real faults
# into the real processes and reports, in plain words and figures, what the
# system did about them:
#
#   1. steady traffic through the gateway;
#   2. a worker killed (SIGKILL): how soon the health-monitor marks it down,
#      and how many calls failed meanwhile (the load-balancer retries a
#      call whose worker died on another one);
#   3. the worker restarted: how soon it serves again;
#   4. transfers between four accounts while the active coordinator is
#      killed: how soon the standby takes over, and whether every transfer
#      reached a definite answer and the money still adds up.
#
# It exits non-zero, saying why, if any of those promises was broken.

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1000 }'; }

demo_failures=()
fail_if() { # arithmetic-result message: records a broken promise
    (($1)) && demo_failures+=("$2")
    return 0
}

# The state the leading health-monitor gives a member ("" if none leads).
member_state() {
    curl -fs "$(gateway_url)/v1/cluster" 2>/dev/null \
        | jq -r --arg id "$1" '.members[]? | select(.id == $id) | .state' 2>/dev/null || true
}

member_is() { [[ $(member_state "$1") == "$2" ]]; } # id state

# Whether worker-2 answered a call successfully since MS.
worker_2_served_since() {
    awk -v t="$1" '$1 >= t && $2 == "worker-2" && $3 == 200 { found = 1 } END { exit !found }' "$work/traffic.log"
}

transfers_sent_at_least() { (($(wc -l <"$work/transfers.log") >= $1)); }

nothing_in_doubt() {
    [[ $(curl -fs "$(gateway_url)/v1/transfers/in-doubt" | jq '.transfers | length') == 0 ]]
}

# wait_for WHAT TIMEOUT_S COMMAND...: polls COMMAND every 50 ms.
wait_for() {
    local what=$1 limit=$(($2 * 20)); shift 2
    for _ in $(seq "$limit"); do "$@" && return 0; sleep 0.05; done
    demo_failures+=("timed out waiting for $what")
    return 1
}

# Calls in a loop, one line per call: "<ms> <worker or -> <status>".
start_traffic() {
    : >"$work/traffic.on"
    (
        while [[ -e "$work/traffic.on" ]]; do
            answer=$(curl -s -m 10 -w ' %{http_code}' "$(gateway_url)/v1/call" \
                -d '{"op":"echo","message":"demo"}' || echo " 000")
            worker=$(sed -nE 's/.*"worker":"([^"]*)".*/\1/p' <<<"$answer")
            echo "$(now_ms) ${worker:--} ${answer##* }"
        done
    ) >>"$work/traffic.log" &
    traffic_pid=$!
}
stop_traffic() { rm -f "$work/traffic.on"; wait "$traffic_pid" 2>/dev/null || true; }
# calls_between FROM_MS TO_MS [AWK CONDITION]: counts logged calls.
calls_between() {
    awk -v from="$1" -v to="$2" "\$1 >= from && \$1 < to && (${3:-1}) { n++ } END { print n + 0 }" "$work/traffic.log"
}

# The metrics are read whole before they are searched: under pipefail,
# `curl | grep -q` fails whenever grep stops at the first match while curl
# is still writing (SIGPIPE), which made an active coordinator look idle.
coordinator_is_active() { # name
    local metrics
    metrics=$(curl -fs "$(admin_url "$1")/metrics" 2>/dev/null) || return 1
    grep -qE '^faultline_coordinator_active 1$' <<<"$metrics"
}

active_coordinator() {
    local name
    for name in coordinator-1 coordinator-2; do
        coordinator_is_active "$name" && { echo "$name"; return 0; }
    done
    return 1
}

# One transfer, retried with the same Idempotency-Key until the answer is
# definite, as a client should: committed (200), refused (422, such as
# insufficient funds) or aborted by the system (503 transfer_aborted: a
# shard's vote was lost, here in the crash; nothing was applied). A 503
# during a takeover, a 504 (outcome unknown) or a 409 (still in progress)
# is not an answer yet. Prints "<outcome> <tries> <ms> <key> <from> <to>
# <amount>".
transfer() { # key from to amount
    local tries=0 started status outcome body=$work/transfer-$1.json
    started=$(now_ms)
    while :; do
        tries=$((tries + 1))
        status=$(curl -s -m 15 -o "$body" -w '%{http_code}' "$(gateway_url)/v1/transfers" \
            -H "Idempotency-Key: $1" -d "{\"from\":\"$2\",\"to\":\"$3\",\"amount\":$4}" || echo 000)
        case $status:$(jq -r '.error.code // empty' "$body" 2>/dev/null) in
            200:*) outcome=committed ;;
            422:*) outcome=refused ;;
            503:transfer_aborted) outcome=aborted ;;
            *) outcome=$status ;;
        esac
        [[ $outcome == "$status" ]] || break
        ((tries < 150)) || break
        sleep 0.2
    done
    rm -f "$body"
    echo "$outcome $tries $(($(now_ms) - started)) $*"
}

balance_sum() { # account...
    local id total=0 balance
    for id in "$@"; do
        balance=$(curl -fs "$(gateway_url)/v1/accounts/$id" | jq -r .balance) || return 1
        total=$((total + balance))
    done
    echo "$total"
}

run_demo() {
    local g; g=$(gateway_url)
    echo
    echo "=== Faultline demo: faults injected into real processes ==="

    # 1. Traffic.
    echo "Sending echo calls through the gateway..."
    start_traffic
    sleep 3

    # 2. Kill a worker.
    local killed_at down_at
    echo "Killing worker-2 (SIGKILL, pid ${service_pid[worker-2]})..."
    killed_at=$(now_ms)
    kill -KILL "${service_pid[worker-2]}"
    wait_for "the monitor to mark worker-2 down" 30 member_is worker-2 down || true
    down_at=$(now_ms)
    sleep 2

    # 3. Restart it.
    local restarted_at back_at
    echo "Restarting worker-2..."
    restarted_at=$(now_ms)
    # shellcheck disable=SC2086 # the command line is a plain word list
    start_service worker-2 ${service_cmd[worker-2]}
    wait_for "worker-2 to serve calls again" 60 worker_2_served_since "$restarted_at" || true
    back_at=$(now_ms)
    sleep 2
    stop_traffic
    local first last total failed outage outage_failed after_restart
    first=$(head -1 "$work/traffic.log" | cut -d' ' -f1)
    last=$(tail -1 "$work/traffic.log" | cut -d' ' -f1)
    total=$(calls_between 0 "$((last + 1))")
    failed=$(calls_between 0 "$((last + 1))" '$3 != 200')
    outage=$(calls_between "$killed_at" "$back_at")
    outage_failed=$(calls_between "$killed_at" "$back_at" '$3 != 200')
    after_restart=$(calls_between "$back_at" "$((last + 1))" '$2 == "worker-2"')

    # 4. Transfers while the active coordinator dies.
    local run accounts=() i
    run=$(date +%s)
    for i in 1 2 3 4; do
        accounts+=("demo-$run-$i")
        curl -fs "$g/v1/accounts" -d "{\"id\":\"demo-$run-$i\",\"balance\":10000}" >/dev/null \
            || demo_failures+=("could not open account demo-$run-$i")
    done
    local before victim successor killed_coordinator_at took_over_at transfers=200
    before=$(balance_sum "${accounts[@]}")
    victim=$(active_coordinator) || victim=""
    echo "Running $transfers transfers between 4 accounts; the active coordinator ($victim) will be killed..."
    (
        for i in $(seq "$transfers"); do
            from=$((RANDOM % 4))
            to=$(((from + 1 + RANDOM % 3) % 4))
            transfer "demo-$run-t$i" "${accounts[from]}" "${accounts[to]}" $((RANDOM % 3000 + 1))
        done
    ) >"$work/transfers.log" &
    local transfers_pid=$!
    wait_for "30 transfers before the kill" 60 transfers_sent_at_least 30 || true
    killed_coordinator_at=$(now_ms)
    if [[ -n "$victim" ]]; then
        echo "Killing $victim (SIGKILL, pid ${service_pid[$victim]})..."
        kill -KILL "${service_pid[$victim]}"
        successor=coordinator-1
        [[ $victim == coordinator-1 ]] && successor=coordinator-2
        wait_for "$successor to take over" 60 coordinator_is_active "$successor" || true
    else
        demo_failures+=("no coordinator was active")
    fi
    took_over_at=$(now_ms)
    wait "$transfers_pid"
    if [[ -n "$victim" ]]; then
        echo "Restarting $victim (it comes back as the standby)..."
        # shellcheck disable=SC2086
        start_service "$victim" ${service_cmd[$victim]}
    fi
    wait_for "every transfer to be finished on every shard" 60 nothing_in_doubt || true
    local after committed refused aborted indefinite retried slowest
    after=$(balance_sum "${accounts[@]}") || after="unreadable"
    committed=$(awk '$1 == "committed"' "$work/transfers.log" | wc -l)
    refused=$(awk '$1 == "refused"' "$work/transfers.log" | wc -l)
    aborted=$(awk '$1 == "aborted"' "$work/transfers.log" | wc -l)
    indefinite=$((transfers - committed - refused - aborted))
    retried=$(awk '$2 > 1' "$work/transfers.log" | wc -l)
    slowest=$(awk 'BEGIN { m = 0 } $3 > m { m = $3 } END { printf "%.2f", m / 1000 }' "$work/transfers.log")

    fail_if "$((failed * 100 > total))" "more than 1 % of calls failed ($failed of $total)"
    fail_if "$((after_restart == 0))" "worker-2 served no call after its restart"
    fail_if "$((indefinite != 0))" "$indefinite transfers never got a definite answer"
    fail_if "$(( $(wc -l <"$work/transfers.log") != transfers ))" "not every transfer was sent"
    # Every committed transfer, and nothing else, is in the balances.
    local account expected actual
    for account in "${accounts[@]}"; do
        expected=$(awk -v a="$account" 'BEGIN { b = 10000 }
            $1 == "committed" && $5 == a { b -= $7 } $1 == "committed" && $6 == a { b += $7 }
            END { print b }' "$work/transfers.log")
        actual=$(curl -fs "$g/v1/accounts/$account" | jq -r .balance)
        [[ "$expected" == "$actual" ]] \
            || demo_failures+=("$account holds $actual, but the committed transfers leave it $expected")
    done
    [[ "$before" == "$after" ]] || demo_failures+=("money was created or lost: $before before, $after after")

    cat <<REPORT

=== What happened ===
Calls:     $total echo calls in $(seconds_between "$first" "$last") s; $((total - failed)) answered 200, $failed failed.
Worker:    worker-2 was killed; the health-monitor marked it down after $(seconds_between "$killed_at" "$down_at") s.
           While it was gone, $((outage - outage_failed)) of $outage calls succeeded: the load-balancers
           retried calls it dropped on other workers and stopped routing to it.
           Restarted, it served calls again after $(seconds_between "$restarted_at" "$back_at") s ($after_restart calls since).
Transfers: $transfers transfers between 4 accounts; ${victim:-no coordinator} was killed after 30 of them,
           ${successor:-none} took over after $(seconds_between "$killed_coordinator_at" "$took_over_at") s.
           $committed committed, $refused refused (insufficient funds), $aborted aborted by the new
           coordinator's recovery (in flight at the crash, nothing applied), $indefinite without a definite answer;
           $retried were retried with the same Idempotency-Key (never applied twice); the slowest took $slowest s.
Money:     $before before, $after after; each account's balance is exactly what its committed
           transfers make it; transfers left in doubt: $(curl -fs "$g/v1/transfers/in-doubt" | jq '.transfers | length').
REPORT
    if ((${#demo_failures[@]})); then
        awk '$1 ~ /^[0-9]+$/ { print "Transfer " $4 ": last answer " $1 " after " $2 " tries, " $3 " ms" }' "$work/transfers.log"
        awk -v first="$first" -v killed="$killed_at" -v back="$back_at" '$3 != 200 {
            printf "Echo call at %.2f s (worker killed at %.2f s, back at %.2f s): status %s\n",
                ($1 - first) / 1000, (killed - first) / 1000, (back - first) / 1000, $3 }' "$work/traffic.log"
        echo
        printf 'DEMO FAILED: %s\n' "${demo_failures[@]}"
        return 1
    fi
    echo "Every promise held."
}

#!/usr/bin/env bash
# The spec's routing test script (A.3 "Validation Commands") against a running
# router: round robin, the strategy switches, backend health, the circuit
# breaker, the routing metrics, failover, and the `ab` load test. It prints
# PASS or FAIL for each check with the reason, a summary, and exits 1 if
# anything failed (2 when a tool it needs is missing).
#
# Usage: scripts/test_routing.sh [--cacert FILE] [BASE_URL]   (default $ROUTER_URL,
#        else http://127.0.0.1:8000, the Envoy listener of `xds-server demo`)
#        An https URL is checked against the CA of --cacert (or $ROUTER_CACERT;
#        `xds-server demo --tls` prints it); without one, against the system's CAs.
#        ab does not verify certificates: it only measures.
# Env:   ROUTER_ADMIN_TOKEN  sent as a bearer token on changing calls
#        AB_REQUESTS / AB_CONCURRENCY  the load test (spec: 1000 / 50)
#
# It changes the running router like the spec's commands do (strategy, and
# the experiments' temporary faults, which they undo); the strategy it found
# is put back at the end.
set -uo pipefail

CACERT="${ROUTER_CACERT:-}"
if [[ "${1:-}" == "--cacert" ]]; then
    CACERT="${2:?--cacert needs a file}"
    shift 2
fi
BASE="${1:-${ROUTER_URL:-http://127.0.0.1:8000}}"
BASE="${BASE%/}"
AB_REQUESTS="${AB_REQUESTS:-1000}"
AB_CONCURRENCY="${AB_CONCURRENCY:-50}"
SEARCH='{"query_vector": [0.1, 0.2, 0.3], "collection": "test"}'
JSON=(-H "Content-Type: application/json")
TLS=()
[[ -n "$CACERT" ]] && TLS=(--cacert "$CACERT")
AUTH=()
[[ -n "${ROUTER_ADMIN_TOKEN:-}" ]] && AUTH=(-H "Authorization: Bearer ${ROUTER_ADMIN_TOKEN}")

for tool in curl ab python3; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0

pass() { echo "PASS  $1"; passed=$((passed + 1)); }
fail() { echo "FAIL  $1: $2"; failed=$((failed + 1)); }

# call METHOD PATH [BODY] -> HTTP status on stdout, body in $WORK/body
call() {
    local method="$1" path="$2" body="${3:-}"
    local args=(-s -o "$WORK/body" -w "%{http_code}" -X "$method" --max-time 120)
    [[ -n "$body" ]] && args+=("${JSON[@]}" -d "$body")
    [[ "$method" != GET ]] && args+=("${AUTH[@]}")
    curl "${TLS[@]}" "${args[@]}" "$BASE$path" || echo 000
}

# field EXPR: evaluate a Python expression on the last body, parsed as `d`
field() {
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($1)" "$WORK/body" 2>/dev/null
}

check_json() { # NAME STATUS WANTED_STATUS EXPR DESCRIPTION
    local name="$1" status="$2" wanted="$3" expr="$4" what="$5"
    if [[ "$status" != "$wanted" ]]; then
        fail "$name" "HTTP $status (wanted $wanted): $(head -c 300 "$WORK/body" 2>/dev/null)"
    elif [[ "$(field "$expr")" != "True" ]]; then
        fail "$name" "$what not true in: $(head -c 300 "$WORK/body")"
    else
        pass "$name"
    fi
}

echo "routing tests against $BASE"

# 0. the router answers, and the strategy to put back at the end
status=$(call GET /api/v1/router/strategy)
if [[ "$status" != 200 ]]; then
    fail "router reachable" "GET /api/v1/router/strategy gave HTTP $status"
    echo "0 passed, 1 failed (nothing else can run)"
    exit 1
fi
initial_strategy=$(field 'd["default_strategy"]')
pass "router reachable (default strategy $initial_strategy)"

# 1. round robin: set it (the README's commands leave the demo on weighted),
#    then 10 searches, one curl each: every one 200, alternating strictly
#    between the qdrant backends (one rotation: README, "Round robin across workers")
status=$(call PUT /api/v1/router/strategy '{"strategy": "round_robin"}')
if [[ "$status" != 200 ]]; then
    fail "round robin" "PUT strategy round_robin gave HTTP $status: $(head -c 300 "$WORK/body")"
fi
codes=()
backends=()
for _ in $(seq 1 10); do
    out=$(curl "${TLS[@]}" -s -o /dev/null -D - -X POST "$BASE/api/v1/vectors/search" "${JSON[@]}" \
        -d "$SEARCH" -w "Backend: %{http_code}\n" --max-time 20)
    codes+=("$(grep -o 'Backend: [0-9]*' <<<"$out" | cut -d' ' -f2)")
    backends+=("$(grep -i '^x-backend:' <<<"$out" | cut -d' ' -f2 | tr -d '\r')")
done
ok=$(printf '%s\n' "${codes[@]}" | grep -c '^200$')
distinct=$(printf '%s\n' "${backends[@]}" | sort -u | wc -l)
repeats=0
for i in $(seq 1 9); do
    [[ "${backends[$i]}" == "${backends[$((i - 1))]}" ]] && repeats=$((repeats + 1))
done
order="${backends[*]}"
if [[ "$status" != 200 ]]; then
    :  # reported above
elif [[ "$ok" == 10 && "$distinct" == 2 && "$repeats" == 0 ]]; then
    pass "round robin: 10/10 answered 200, strictly alternating ($order)"
else
    fail "round robin" "$ok/10 answered 200, $repeats repeats in a row, order: $order"
fi

# 2-3. strategy switches, applied = ACKed by every connected Envoy
for strategy in least_connections weighted; do
    status=$(call PUT /api/v1/router/strategy "{\"strategy\": \"$strategy\"}")
    check_json "strategy -> $strategy" "$status" 200 \
        "d['strategy_change']['strategy_applied'] and d['strategy_change']['new_strategy'] == '$strategy'" \
        "strategy_applied"
done

# 4. backend health
status=$(call GET /api/v1/router/health)
check_json "backend health" "$status" 200 \
    "d['overall_health'] == 'healthy' and d['healthy_backends'] == d['total_backends'] > 0" \
    "every backend healthy"

# 5. circuit breaker: the backend fails until Envoy ejects it, the backup serves
status=$(call POST /api/v1/router/circuit-breaker/test '{"backend": "qdrant", "simulate_failure": true}')
check_json "circuit breaker" "$status" 200 \
    "d['circuit_breaker_test']['circuit_breaker_triggered'] and d['circuit_breaker_test']['failover_activated']" \
    "circuit_breaker_triggered and failover_activated"

# 6. routing metrics
status=$(call GET /api/v1/router/metrics)
check_json "routing metrics" "$status" 200 \
    "d['routing_metrics']['total_requests'] > 0 and 'qdrant-primary' in d['load_balancing']['backend_distribution']" \
    "requests counted per backend"

# 7. failover: the primary fails under traffic, nothing is lost, it comes back
status=$(call POST /api/v1/router/failover/test '{"primary_backend": "qdrant-primary", "simulate_failure": true}')
check_json "failover" "$status" 200 \
    "d['failover_test']['failover_triggered'] and d['failover_test']['requests_lost'] == 0 and d['failover_test']['recovery_successful']" \
    "failover_triggered, requests_lost == 0 and recovery_successful"

# 8. load test: ab -n 1000 -c 50 with the search body, every request 2xx
printf '%s' "$SEARCH" >"$WORK/search_request.json"
call GET "/api/v1/router/metrics?service=qdrant" >/dev/null
before=$(field 'json.dumps({k: v["requests"] for k, v in d["load_balancing"]["backend_distribution"].items()})')
ab -q -n "$AB_REQUESTS" -c "$AB_CONCURRENCY" -T application/json -p "$WORK/search_request.json" \
    "$BASE/api/v1/vectors/search" >"$WORK/ab.txt" 2>&1
ab_status=$?
complete=$(awk '/^Complete requests:/ {print $3}' "$WORK/ab.txt")
failures=$(awk '/^Failed requests:/ {print $3}' "$WORK/ab.txt")
non2xx=$(awk '/^Non-2xx responses:/ {print $3}' "$WORK/ab.txt")
rps=$(awk '/^Requests per second:/ {print $4}' "$WORK/ab.txt")
if [[ $ab_status == 0 && "$complete" == "$AB_REQUESTS" && "$failures" == 0 && -z "$non2xx" ]]; then
    pass "load test: $complete requests, 0 failed, $rps req/s"
else
    fail "load test" "ab exit $ab_status, complete ${complete:-?}, failed ${failures:-?}, non-2xx ${non2xx:-0}"
fi
call GET "/api/v1/router/metrics?service=qdrant" >/dev/null
echo "Backend Distribution (load test):"
python3 - "$WORK/body" "$before" <<'EOF'
import json, sys
after = json.load(open(sys.argv[1]))["load_balancing"]["backend_distribution"]
before = json.loads(sys.argv[2])
taken = {name: entry["requests"] - before.get(name, 0) for name, entry in after.items()}
total = sum(taken.values()) or 1
for name, count in sorted(taken.items()):
    print(f"- {name}: {count} requests ({100 * count / total:.1f}%)")
EOF

# put the strategy back
status=$(call PUT /api/v1/router/strategy "{\"strategy\": \"$initial_strategy\"}")
[[ "$status" == 200 ]] || echo "note: could not restore strategy $initial_strategy (HTTP $status)"

echo "$passed passed, $failed failed"
((failed == 0))

#!/usr/bin/env bash
# 1:1 traffic through the distributed roles: starts one router and one ingest node (release
# build) on a Kafka broker and a redis-server, runs `chorus-bench dm` against the ingest node for
# each "SESSIONSxIN_FLIGHT" given and, in the same run, `chorus-bench raw-kafka` with as many
# sends outstanding; prints both JSON reports and a line with the ratios, then stops the roles.
#
#   cargo build --release -p chorus -p chorus-bench
#   bench/distributed.sh 20x1 200x4
#
# Services: CHORUS_KAFKA_BOOTSTRAP / CHORUS_REDIS_URL if set, else scripts/services starts them
# (and stops them at the end). Topics get a fresh prefix per run; rate limits are raised so the
# benchmark measures the pipeline, not the limiter.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=target/release/chorus
bench=target/release/chorus-bench
[[ -x "$binary" && -x "$bench" ]] || {
  echo "build first: cargo build --release -p chorus -p chorus-bench" >&2
  exit 1
}
seconds="${BENCH_SECONDS:-10}"
work="$(mktemp -d)"
pids=()
started=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for service in "${started[@]}"; do scripts/services/"$service" stop >/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for service in redis kafka; do
  variable=CHORUS_REDIS_URL
  [[ "$service" == kafka ]] && variable=CHORUS_KAFKA_BOOTSTRAP
  if [[ -z "${!variable:-}" ]]; then
    line="$(scripts/services/"$service" start | tail -n 1)"
    started+=("$service")
    export "${line?}"
  fi
done
cat > "$work/chorus.toml" <<'EOF'
[limits]
messages_per_second = 1000000
message_burst = 1000000
user_messages_per_second = 1000000
user_message_burst = 1000000
EOF
export CHORUS_JWT_SECRET="${CHORUS_JWT_SECRET:-chorus-bench-secret-0123456789}"
export CHORUS_API_KEY="${CHORUS_API_KEY:-chorus-bench-api-key-0123456789}"
export CHORUS_TOPIC_PREFIX="bench$$." CHORUS_LOG="${CHORUS_LOG:-warn}"
CHORUS_NODE_ID="bench$$-router" "$binary" --config "$work/chorus.toml" router \
  --listen 127.0.0.1:0 >"$work/router.out" &
pids+=($!)
CHORUS_NODE_ID="bench$$-ingest" "$binary" --config "$work/chorus.toml" ingest \
  --listen 127.0.0.1:0 >"$work/ingest.out" &
pids+=($!)
url=""
for _ in $(seq 1 300); do
  url="$(grep -o 'http://[0-9.:]*' "$work/ingest.out" || true)"
  [[ -n "$url" ]] && break
  sleep 0.1
done
[[ -n "$url" ]] || { echo "the ingest node did not start" >&2; exit 1; }
for spec in "${@:-20x1 200x4}"; do
  for one in $spec; do
    sessions="${one%x*}"
    in_flight="${one#*x}"
    chorus="$("$bench" dm --url "$url" --sessions "$sessions" --in-flight "$in_flight" --seconds "$seconds")"
    # the baseline in the same run: a raw rdkafka producer with as many sends outstanding
    raw="$("$bench" raw-kafka --bootstrap "$CHORUS_KAFKA_BOOTSTRAP" \
      --in-flight "$((sessions * in_flight))" --seconds "$seconds")"
    CHORUS_JSON="$chorus" RAW_JSON="$raw" python3 - <<'PY'
import json, os
chorus, raw = json.loads(os.environ["CHORUS_JSON"]), json.loads(os.environ["RAW_JSON"])
print(json.dumps(chorus))
print(json.dumps(raw))
print(json.dumps({
    "sessions_x_in_flight": f'{chorus["sessions"]}x{chorus["in_flight"]}',
    "chorus_acked_per_second": round(chorus["acked_per_second"]),
    "raw_acked_per_second": round(raw["acked_per_second"]),
    "throughput_ratio": round(chorus["acked_per_second"] / raw["acked_per_second"], 3),
    "chorus_delivery_p99_ms": chorus["delivery_latency"]["p99_ms"],
    "raw_round_trip_p99_ms": raw["round_trip_latency"]["p99_ms"],
}))
PY
  done
done

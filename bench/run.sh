#!/usr/bin/env bash
# The whole benchmark in one command: builds the release binaries, runs `chorus-bench suite` on
# the embedded default and on the distributed roles (Kafka + Redis, started here with
# scripts/services unless CHORUS_KAFKA_BOOTSTRAP / CHORUS_REDIS_URL are set), prints each table
# and writes the figures to bench-results/<mode>.json.
#
#   bench/run.sh                 # both modes, full sizes
#   bench/run.sh --quick         # a short smoke run
#   BENCH_MODES=embedded bench/run.sh --idle 10000,19000
#
# Extra arguments go to `chorus-bench suite` (see `chorus-bench suite --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p chorus -p chorus-bench
bench=target/release/chorus-bench
mkdir -p bench-results
started=()
cleanup() {
  for service in "${started[@]}"; do scripts/services/"$service" stop >/dev/null || true; done
}
trap cleanup EXIT
for mode in ${BENCH_MODES:-embedded kafka}; do
  mode_args=()
  if [[ "$mode" == kafka ]]; then
    for service in redis kafka; do
      variable=CHORUS_REDIS_URL
      [[ "$service" == kafka ]] && variable=CHORUS_KAFKA_BOOTSTRAP
      if [[ -z "${!variable:-}" ]]; then
        line="$(scripts/services/"$service" start | tail -n 1)"
        started+=("$service")
        export "${line?}"
      fi
    done
    mode_args=(--kafka "$CHORUS_KAFKA_BOOTSTRAP" --redis "$CHORUS_REDIS_URL")
  fi
  echo "== $mode =="
  "$bench" "${mode_args[@]}" --json "bench-results/$mode.json" suite "$@"
done

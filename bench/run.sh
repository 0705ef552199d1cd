#!/usr/bin/env bash
# The whole benchmark in one command: builds the release binaries, runs `chorus-bench suite` on
# the embedded default and on the distributed roles (Kafka + Redis, started here with
# scripts/services unless CHORUS_KAFKA_BOOTSTRAP / CHORUS_REDIS_URL are set), prints each table
# and writes the figures to bench-results/<mode>.json.
#
# The low-rate, idle and burst scenarios also measure Centrifugo v6.9.1 in the same run
# (bench/centrifugo/): the script installs it with `go install` into target/centrifugo/ (once;
# skipped when that binary is there) unless CHORUS_BENCH_CENTRIFUGO names a binary already.
# Without `go` it says so and those scenarios measure Chorus alone.
#
#   bench/run.sh                 # both modes, full sizes
#   bench/run.sh --quick         # a short smoke run
#   BENCH_MODES=embedded bench/run.sh --idle 10000,19000
#
# Extra arguments go to `chorus-bench suite` (see `chorus-bench suite --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p chorus -p chorus-bench
centrifugo_version=6.9.1
if [[ -z "${CHORUS_BENCH_CENTRIFUGO:-}" ]]; then
  centrifugo_dir="$PWD/target/centrifugo"
  installed="$("$centrifugo_dir/centrifugo" version 2>/dev/null || true)"
  if [[ "$installed" != "Centrifugo v$centrifugo_version "* ]]; then
    if command -v go >/dev/null; then
      echo "installing Centrifugo v$centrifugo_version into $centrifugo_dir"
      # the version is stamped the way Centrifugo's release builds do it
      GOBIN="$centrifugo_dir" go install \
        -ldflags "-X github.com/centrifugal/centrifugo/v6/internal/build.Version=$centrifugo_version" \
        "github.com/centrifugal/centrifugo/v6@v$centrifugo_version"
    else
      echo "go not found: the Centrifugo comparisons are skipped" >&2
    fi
  fi
  if [[ -x "$centrifugo_dir/centrifugo" ]]; then
    export CHORUS_BENCH_CENTRIFUGO="$centrifugo_dir/centrifugo"
  fi
fi
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

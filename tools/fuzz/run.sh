#!/usr/bin/env bash
# Runs every fuzz target (coverage-guided, libFuzzer via cargo-fuzz on the stable toolchain)
# for SECONDS each (default 20), from its committed seed corpus, and prints one line per
# target: executions, corpus size, and whether it crashed. Exits non-zero on any crash; the
# crashing input is under tools/fuzz/artifacts/<target>/.
#   bash tools/fuzz/run.sh [SECONDS] [TARGET...]
# One target by hand: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tools/fuzz smtp_session
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(smtp_session pop3_session imap_session address sasl admin_http cluster_frame cluster_payload
           record checkpoint segment_header config_toml)
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build --fuzz-dir tools/fuzz "${targets[@]/#/}" 2>/dev/null || cargo fuzz build --fuzz-dir tools/fuzz
failed=0
for target in "${targets[@]}"; do
  corpus="tools/fuzz/corpus/$target"
  work=$(mktemp -d)
  mkdir -p "$corpus" "tools/fuzz/artifacts/$target"
  log="$work/log"
  # New inputs go to a scratch corpus; the committed seeds stay as they are.
  if cargo fuzz run --fuzz-dir tools/fuzz "$target" "$work" "$corpus" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="tools/fuzz/artifacts/$target/" > "$log" 2>&1; then
    status=ok
  else
    status=CRASHED
    failed=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  echo "fuzz $target: ${seconds}s, $runs executions, coverage $cov, $status"
  if [ "$status" != ok ]; then tail -40 "$log"; fi
  rm -rf "$work"
done
exit $failed

#!/usr/bin/env bash
# Reaction time of an automatic rollback: median over 10 runs (see bench/src/bin/reaction-time.rs).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
cargo build --release --quiet -p canarygate -p canarygate-bench
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
CANARYGATE_BIN="$TARGET/release/canarygate" "$TARGET/release/reaction-time"

#!/bin/sh
# Fuzz blocksmtp's line parser for a bounded time: fuzz/run.sh [SECONDS] (default 60).
# Needs a nightly toolchain; installs cargo-fuzz if missing. Crashes land in
# fuzz/artifacts/parse_line/ and make this script exit non-zero.
set -eu
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
mkdir -p corpus/parse_line
exec cargo +nightly fuzz run parse_line corpus/parse_line seeds -- -max_total_time="${1:-60}"

#!/usr/bin/env bash
# The test command: set-up (idempotent), build, then every CTest test. Exit code is the verdict.
#   scripts/test.sh [ctest args...]      e.g. scripts/test.sh -R Golden
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
# Two test processes at a time on 2 cores; each test runs single-threaded (tests/CMakeLists.txt).
ctest --test-dir build --output-on-failure -j "${BONSAI_TEST_JOBS:-2}" --timeout 900 "$@"

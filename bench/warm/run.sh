#!/usr/bin/env bash
# Wall and CPU time of a warm `vmprep prepare` (everything cached) as fresh
# processes: answered from the store, through the embedded server and stages
# (--request-id), and `vmprep version` as the floor. Environment:
# BENCH_ROUNDS (default 30); VMPREP_BASELINE_BIN, another vmprep binary
# (e.g. built from an older commit) to time the same way.
set -euo pipefail
cd "$(dirname "$0")/../.."
go test -run '^$' -bench BenchmarkWarmPrepare -benchtime 1x -timeout 30m ./bench/warm/

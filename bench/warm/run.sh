#!/usr/bin/env bash
# Wall and CPU time of a warm `vmprep prepare` (everything cached) as fresh
# processes: answered from the store, through the embedded server and stages
# (--request-id), and `vmprep version` as the floor; then the warm answer's
# own work in one process (embedded.FromStore). Environment: BENCH_ROUNDS
# (default 30); VMPREP_BASELINE_BIN, another vmprep binary (e.g. built from
# an older commit: git archive COMMIT | tar -x -C DIR; go build -C DIR
# ./cmd/vmprep) to time the same way.
set -euo pipefail
cd "$(dirname "$0")/../.."
uptime
go test -run '^$' -bench BenchmarkWarmPrepare -benchtime 1x -timeout 30m ./bench/warm/
go test -run '^$' -bench BenchmarkFromStore -benchtime 200x -count 3 ./bench/warm/
uptime

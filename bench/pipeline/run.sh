#!/usr/bin/env bash
# Cold and warm vmprep prepare against the shell pipeline a user would write
# (curl, sha256sum, qemu-img convert) on a ~1 GiB local mirror over loopback,
# plus each stage process's peak RSS. Needs curl and qemu-utils.
# Environment: BENCH_ROUNDS (default 3), BENCH_DISK_DATA_MIB (default 1800).
set -euo pipefail
cd "$(dirname "$0")/../.."
go test -run '^$' -bench BenchmarkPrepareVsShell -benchtime 1x -timeout 60m ./bench/pipeline/

#!/usr/bin/env bash
# Many clients, one deployment (issue 7): 1, 10 and 50 concurrent clients on
# hosts of their own (mount namespaces: needs root and unshare) get the same
# image from resolver + verifier + three fetchers sharing one object bucket,
# from a local mirror over loopback. Prints p50/p99 per client, origin bytes
# per asset, peak RSS and CPU per process kind. Needs qemu-utils.
# Environment: BENCH_ROUNDS (default 2), BENCH_CLIENTS (default "1 10 50"),
# BENCH_DISK_DATA_MIB (default 256), BENCH_KERNEL_KIB (14336), BENCH_INITRD_KIB
# (61440), BENCH_FORMAT (qcow2 or raw; default qcow2). A tiny image
# (BENCH_DISK_DATA_MIB=1 BENCH_KERNEL_KIB=256 BENCH_INITRD_KIB=512) shows the
# cost of coordination without the bandwidth.
# Writes up to (clients × image size) under $TMPDIR, removed per deployment.
set -euo pipefail
cd "$(dirname "$0")/../.."
go test -run '^$' -bench BenchmarkClients -benchtime 1x -timeout 90m ./bench/multihost/

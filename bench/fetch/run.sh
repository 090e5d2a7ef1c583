#!/usr/bin/env bash
# Fetch + hash benchmark: curl vs internal/download on a 1 GiB file served over
# loopback by bench/fetch/serve (the same server for both).
#
#   bench/fetch/run.sh            # 5 runs of each
#   RUNS=7 SIZE_MIB=1024 ALG=sha512 bench/fetch/run.sh   # verify SHA-512 (and SHA-256)
#
# Prints the median wall time of: curl -s -o FILE URL; curl followed by an
# fsync of FILE (the durability our fetch provides); our fetch with sha256
# verification (bench/fetch/fetch), and our peak RSS. CPU is user+sys of
# the client process (the server's is not counted); the machine is shared,
# so the load average is printed too.
set -euo pipefail

RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-1024}
ALG=${ALG:-sha256}
case $ALG in sha256 | sha512) ;; *) echo "ALG must be sha256 or sha512" >&2; exit 1 ;; esac
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fetchbench.XXXXXX")
SERVER_PID=
cleanup() {
	if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

[[ -x /usr/bin/time ]] || { echo "need GNU time: apt-get install -y time" >&2; exit 1; }
command -v curl >/dev/null || { echo "need curl" >&2; exit 1; }

(cd "$ROOT" && go build -o "$WORK/serve" ./bench/fetch/serve && go build -o "$WORK/fetch" ./bench/fetch/fetch)

echo "creating ${SIZE_MIB} MiB of random data" >&2
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/image.bin"
SIZE=$(stat -c %s "$WORK/image.bin")
SUM=$("${ALG}sum" "$WORK/image.bin" | cut -d' ' -f1)

"$WORK/serve" -file "$WORK/image.bin" >"$WORK/url" 2>"$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 50); do [[ -s $WORK/url ]] && break; sleep 0.1; done
URL=$(cat "$WORK/url")

# timed NAME CMD...: run CMD under GNU time, append "wall_s maxrss_kb cpu_s" to $WORK/NAME.
timed() {
	local name=$1
	shift
	rm -f "$WORK/out" "$WORK/out.meta"
	# Settle the filesystem first: / is mounted with "discard", and the
	# journal commit that discards the previous run's 1 GiB would otherwise
	# land on whichever run comes next (it slows ours, which fsyncs, far more
	# than curl, which never touches the disk while timed).
	sync -f "$WORK"
	/usr/bin/time -f "%e %M %U %S" -o "$WORK/time" "$@" >/dev/null
	awk '{printf "%s %s %.2f\n", $1, $2, $3 + $4}' "$WORK/time" >>"$WORK/$name"
	rm -f "$WORK/out" "$WORK/out.meta"
}
run_curl() { timed curl curl -s -o "$WORK/out" "$URL"; }
run_curl_sync() { timed curl_sync sh -c 'curl -s -o "$1" "$2" && sync "$1"' sh "$WORK/out" "$URL"; }
run_ours() { timed ours "$WORK/fetch" -url "$URL" -dest "$WORK/out" -size "$SIZE" -digest "$ALG:$SUM"; }

# A run's speed depends on what ran just before it: on this VM, ours takes
# 1.5-2.7 s right after a curl run but 1.1-1.5 s after one of its own, while
# curl is the same either way (see docs/BENCHMARKS.md). So each tool is timed
# in a block of consecutive runs after one untimed warm-up run of its own,
# and the blocks go in ABC then CBA order to spread drift in the machine's load.
block() {
	local tool=$1 n=$2 name
	name=${tool#run_}
	"$tool"
	sed -i '$d' "$WORK/$name" # drop the warm-up
	for _ in $(seq "$n"); do "$tool"; done
}
FIRST=$(((RUNS + 1) / 2))
SECOND=$((RUNS - FIRST))
for t in run_curl run_curl_sync run_ours; do block "$t" "$FIRST"; done
if ((SECOND > 0)); then
	for t in run_ours run_curl_sync run_curl; do block "$t" "$SECOND"; done
fi

median() { cut -d' ' -f"$2" "$WORK/$1" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
CURL=$(median curl 1)
CURL_SYNC=$(median curl_sync 1)
OURS=$(median ours 1)
RSS=$(cut -d' ' -f2 "$WORK/ours" | sort -n | tail -1)

echo "file:                 $SIZE bytes, $RUNS runs each, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "curl -s -o:           median ${CURL} s   (runs: $(cut -d' ' -f1 "$WORK/curl" | xargs); median CPU $(median curl 3) s)"
echo "curl + fsync:         median ${CURL_SYNC} s   (runs: $(cut -d' ' -f1 "$WORK/curl_sync" | xargs); median CPU $(median curl_sync 3) s)"
echo "ours ($ALG, fsync): median ${OURS} s   (runs: $(cut -d' ' -f1 "$WORK/ours" | xargs); median CPU $(median ours 3) s)"
awk -v o="$OURS" -v c="$CURL" -v s="$CURL_SYNC" 'BEGIN {printf "median ratio:         ours/curl %.2fx   ours/(curl+fsync) %.2fx   (goal <= 1.10x)\n", o/c, o/s}'
# The fastest run is the one least disturbed by other load on a shared machine.
best() { cut -d' ' -f1 "$WORK/$1" | sort -n | head -1; }
awk -v o="$(best ours)" -v c="$(best curl)" -v s="$(best curl_sync)" 'BEGIN {printf "best-run ratio:       ours/curl %.2fx   ours/(curl+fsync) %.2fx   (best: ours %s s, curl %s s, curl+fsync %s s)\n", o/c, o/s, o, c, s}'
echo "ours peak RSS:        $((RSS / 1024)) MiB"

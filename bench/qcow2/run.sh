#!/usr/bin/env bash
# qcow2 → raw benchmark: qemu-img convert vs vmprep's qcow2.ConvertToRaw.
# Builds a 2 GiB-virtual disk holding 1 GiB of realistic data (files from
# /usr: binaries, libraries, text; 1 MiB pieces interleaved with 1 MiB holes),
# stores it as qcow2 with 64 KiB clusters uncompressed, zlib- and
# zstd-compressed, then converts each to raw with both tools, alternating,
# ROUNDS times. Prints the median wall time, ratio ours/qemu-img and peak RSS.
# Everything lives under $BENCH_DIR (default /tmp) and is removed at the end.
#
#   bash bench/qcow2/run.sh            # from the repository root
#   ROUNDS=5 JOBS=4 bash bench/qcow2/run.sh
#   KEEP_DIR=/tmp/qcow2bench bash bench/qcow2/run.sh   # keep and reuse the images
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
JOBS=${JOBS:-0}
if [ -n "${KEEP_DIR:-}" ]; then
  work=$KEEP_DIR
  mkdir -p "$work"
else
  work=$(mktemp -d "${BENCH_DIR:-/tmp}/qcow2bench.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi

go build -o "$work/qcow2bench" ./bench/qcow2
command -v qemu-img >/dev/null || { echo "qemu-img not installed" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time not installed (apt-get install time)" >&2; exit 1; }

if [ ! -f "$work/want.sha256" ]; then
  echo "building 2 GiB raw with 1 GiB of data..." >&2
  # Realistic content: the first 1 GiB of a tar of /usr (tar dies of SIGPIPE
  # once head has enough, hence || true).
  tar cf - /usr/lib /usr/share /usr/bin 2>/dev/null | head -c 1G >"$work/data" || true
  [ "$(stat -c %s "$work/data")" -eq $((1 << 30)) ] || { echo "need 1 GiB under /usr" >&2; exit 1; }
  truncate -s 2G "$work/src.raw"
  python3 - "$work/data" "$work/src.raw" <<'PY'
import sys
MiB = 1 << 20
with open(sys.argv[1], "rb") as src, open(sys.argv[2], "r+b") as dst:
    for i in range(1024):
        dst.seek(2 * i * MiB)
        dst.write(src.read(MiB))
PY
  rm "$work/data"
  qemu-img convert -f raw -O qcow2 -o cluster_size=64k "$work/src.raw" "$work/plain.qcow2"
  qemu-img convert -c -f raw -O qcow2 -o cluster_size=64k "$work/src.raw" "$work/zlib.qcow2"
  qemu-img convert -c -f raw -O qcow2 -o cluster_size=64k,compression_type=zstd "$work/src.raw" "$work/zstd.qcow2"
  sha256sum <"$work/src.raw" | cut -d' ' -f1 >"$work/want.sha256"
  rm "$work/src.raw"
fi
want=$(cat "$work/want.sha256")
ls -l "$work"/*.qcow2 >&2

# measure CMD...: prints "wall_seconds rss_kib cpu_seconds" (cpu = user + sys)
measure() {
  local log="$work/time.log"
  /usr/bin/time -v "$@" 2>"$log" >/dev/null
  local wall rss cpu
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  cpu=$(awk -F': ' '/User time|System time/ {s+=$2} END {print s}' "$log")
  echo "$wall $rss $cpu"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

jobs_flag=()
[ "$JOBS" -gt 0 ] && jobs_flag=(-j "$JOBS")
# qemu-img does not fsync its output; ours does (temp file, fsync, rename).
# "qemu+fsync" times qemu-img followed by an fsync of its output, the like-for-like figure.
# CPU time (user + sys) is reported too: on a shared machine it varies far
# less than wall time.
printf "%-6s %9s %11s %9s %7s %9s %9s %9s %10s %10s\n" image qemu-img qemu+fsync ours ratio "ratio(f)" "qemu CPU" "ours CPU" "ours RSS" "qemu RSS"
for img in plain zlib zstd; do
  : >"$work/q.t"; : >"$work/qs.t"; : >"$work/o.t"; : >"$work/qc.t"; : >"$work/oc.t"; orss=0; qrss=0
  for _ in $(seq "$ROUNDS"); do
    read -r t r c < <(measure qemu-img convert -f qcow2 -O raw "$work/$img.qcow2" "$work/q.raw")
    echo "$t" >>"$work/q.t"; echo "$c" >>"$work/qc.t"; qrss=$(( r > qrss ? r : qrss ))
    rm -f "$work/q.raw"
    read -r t r c < <(measure sh -c 'qemu-img convert -f qcow2 -O raw "$1" "$2" && sync "$2"' sh "$work/$img.qcow2" "$work/q.raw")
    echo "$t" >>"$work/qs.t"
    rm -f "$work/q.raw"
    read -r t r c < <(measure "$work/qcow2bench" "${jobs_flag[@]}" "$work/$img.qcow2" "$work/o.raw")
    echo "$t" >>"$work/o.t"; echo "$c" >>"$work/oc.t"; orss=$(( r > orss ? r : orss ))
    got=$(sha256sum <"$work/o.raw" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "$img: output digest $got != source $want" >&2; exit 1; }
    rm -f "$work/o.raw"
  done
  q=$(median <"$work/q.t"); qs=$(median <"$work/qs.t"); o=$(median <"$work/o.t")
  qc=$(median <"$work/qc.t"); oc=$(median <"$work/oc.t")
  printf "%-6s %8.2fs %10.2fs %8.2fs %6.2fx %8.2fx %8.2fs %8.2fs %6d KiB %6d KiB\n" "$img" "$q" "$qs" "$o" \
    "$(echo "$o / $q" | bc -l)" "$(echo "$o / $qs" | bc -l)" "$qc" "$oc" "$orss" "$qrss"
done

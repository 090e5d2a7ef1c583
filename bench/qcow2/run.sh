#!/usr/bin/env bash
# qcow2 → raw benchmark: qemu-img convert vs vmprep's qcow2.ConvertToRaw.
# Builds a 2 GiB-virtual disk holding 1 GiB of realistic data (files from
# /usr: binaries, libraries, text; 1 MiB pieces interleaved with 1 MiB holes),
# stores it as qcow2 with 64 KiB clusters uncompressed, zlib- and
# zstd-compressed, then converts each to raw with both tools, alternating,
# ROUNDS times. Prints the median wall time (and the range), ratio
# ours/qemu-img, CPU time and peak RSS.
# Everything lives under $BENCH_DIR (default /dev/shm when it is a tmpfs, so
# images and outputs are in memory and the page cache is warm for every
# tool; else /tmp) and is removed at the end.
#
#   bash bench/qcow2/run.sh            # from the repository root
#   ROUNDS=7 JOBS=4 bash bench/qcow2/run.sh
#   BASE_REF=main bash bench/qcow2/run.sh   # also time the converter as of that git ref
#   KEEP_DIR=/dev/shm/qcow2bench bash bench/qcow2/run.sh   # keep and reuse the images
#   NICE=-15 bash bench/qcow2/run.sh   # every contender at that priority (root): on a
#                                      # machine busy with other work, near-idle conditions
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
JOBS=${JOBS:-0}
if [ -z "${BENCH_DIR:-}" ]; then
  BENCH_DIR=/tmp
  [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && BENCH_DIR=/dev/shm
fi
if [ -n "${KEEP_DIR:-}" ]; then
  work=$KEEP_DIR
  mkdir -p "$work"
else
  work=$(mktemp -d "$BENCH_DIR/qcow2bench.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
fstype=$(stat -f -c %T "$work")

go build -o "$work/qcow2bench" ./bench/qcow2
if [ -n "${BASE_REF:-}" ]; then
  # The same command built from another commit, for before/after in one run.
  base_src=$(mktemp -d)
  git archive "$BASE_REF" | tar -x -C "$base_src"
  (cd "$base_src" && go build -o "$work/qcow2bench.base" ./bench/qcow2)
  rm -rf "$base_src"
fi
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
echo "work dir $work ($fstype), $ROUNDS rounds, nice ${NICE:-0}, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# measure CMD...: prints "wall_seconds rss_kib cpu_seconds" (cpu = user + sys)
measure() {
  local log="$work/time.log"
  "${prio[@]}" /usr/bin/time -v "$@" 2>"$log" >/dev/null
  local wall rss cpu
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  cpu=$(awk -F': ' '/User time|System time/ {s+=$2} END {print s}' "$log")
  echo "$wall $rss $cpu"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
range() { sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.2f–%.2f", lo, hi}'; }

prio=()
[ -n "${NICE:-}" ] && prio=(nice -n "$NICE")
jobs_flag=()
[ "$JOBS" -gt 0 ] && jobs_flag=(-j "$JOBS")
# ours: convert with the given binary; in the first round check the
# output's digest (hashing 2 GiB every time would double the run's length).
ours() {
  local bin=$1 img=$2 round=$3
  read -r t r c < <(measure "$work/$bin" "${jobs_flag[@]}" "$work/$img.qcow2" "$work/o.raw")
  if [ "$round" = 1 ]; then
    got=$(sha256sum <"$work/o.raw" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "$img: $bin output digest $got != source $want" >&2; exit 1; }
  fi
  rm -f "$work/o.raw"
  echo "$t $r $c"
}
# qemu-img does not fsync its output; ours does (temp file, fsync, rename).
# On a disk file system "qemu+fsync" times qemu-img followed by an fsync of
# its output, the like-for-like figure; on tmpfs an fsync does nothing and the
# column is left out. CPU time (user + sys) is reported too: on a shared
# machine it varies far less than wall time.
fsync_col=1
[ "$fstype" = tmpfs ] && fsync_col=0
contenders=(qemu ours)
[ -n "${BASE_REF:-}" ] && contenders+=(base)
for img in plain zlib zstd; do
  for k in "${contenders[@]}" qs; do : >"$work/$k.t"; : >"$work/$k.c"; echo 0 >"$work/$k.r"; done
  for round in $(seq "$ROUNDS"); do
    # Rotate who goes first: the machine's state drifts within a round.
    n=${#contenders[@]}
    for i in $(seq 0 $((n - 1))); do
      k=${contenders[$(((i + round) % n))]}
      case $k in
      qemu)
        read -r t r c < <(measure qemu-img convert -f qcow2 -O raw "$work/$img.qcow2" "$work/q.raw")
        rm -f "$work/q.raw"
        if [ "$fsync_col" = 1 ]; then
          read -r ts _ _ < <(measure sh -c 'qemu-img convert -f qcow2 -O raw "$1" "$2" && sync "$2"' sh "$work/$img.qcow2" "$work/q.raw")
          echo "$ts" >>"$work/qs.t"
          rm -f "$work/q.raw"
        fi ;;
      ours) read -r t r c < <(ours qcow2bench "$img" "$round") ;;
      base) read -r t r c < <(ours qcow2bench.base "$img" "$round") ;;
      esac
      echo "$t" >>"$work/$k.t"; echo "$c" >>"$work/$k.c"
      prev=$(cat "$work/$k.r"); echo $((r > prev ? r : prev)) >"$work/$k.r"
    done
  done
  q=$(median <"$work/qemu.t")
  for k in "${contenders[@]}"; do
    m=$(median <"$work/$k.t")
    line=$(printf "%-6s %-5s %6.2fs (%s) %6.2fx  CPU %5.2fs  RSS %6d KiB" "$img" "$k" "$m" "$(range <"$work/$k.t")" \
      "$(echo "$m / $q" | bc -l)" "$(median <"$work/$k.c")" "$(cat "$work/$k.r")")
    if [ "$k" = qemu ] && [ "$fsync_col" = 1 ]; then
      line+=$(printf "  qemu+fsync %.2fs" "$(median <"$work/qs.t")")
    fi
    echo "$line"
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

#!/usr/bin/env bash
# Clone of a 3.5 GiB-virtual raw disk (1.2 GiB of data): pkg/clone's reflink
# against cp --reflink=always and a real copy on loop-mounted XFS (reflink=1),
# and pkg/clone's copy fallback against cp --sparse=always on ext4.
# Needs root (loop mounts), mkfs.xfs, mkfs.ext4, GNU cp. Writes ~5 GiB under
# $WORK (default /tmp) and removes it. ROUNDS (default 3) alternating rounds.
# Every figure includes making the result durable: ours fsyncs (DEST appears
# only complete), so cp is followed by `sync FILE`.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
WORK=$(mktemp -d "${WORK:-/tmp}/clone-bench.XXXXXX")
cleanup() {
  for m in "$WORK"/xfs "$WORK"/ext4; do mountpoint -q "$m" && umount "$m"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
go build -o "$WORK/clone-bench" ./bench/clone

now() { date +%s.%N; }
timed() { local s e; s=$(now); "$@" >/dev/null; e=$(now); echo "$e - $s" | bc; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for fs in xfs ext4; do
  truncate -s 6G "$WORK/$fs.img"
  case $fs in
    xfs) mkfs.xfs -q -m reflink=1 "$WORK/$fs.img" ;;
    ext4) mkfs.ext4 -q -F "$WORK/$fs.img" ;;
  esac
  mkdir "$WORK/$fs"
  mount -o loop "$WORK/$fs.img" "$WORK/$fs"
  "$WORK/clone-bench" mkbase "$WORK/$fs/base.raw"
done
echo "base: $(du -h --apparent-size "$WORK/xfs/base.raw" | cut -f1) virtual, $(du -h "$WORK/xfs/base.raw" | cut -f1) data"

declare -A t
for r in $(seq "$ROUNDS"); do
  d=$WORK/xfs
  out=$("$WORK/clone-bench" clone "$d/base.raw" "$d/ours.raw"); echo "round $r xfs ours: $out"
  t[xfs_ours]+="$(echo "$out" | cut -d' ' -f2) "
  t[xfs_cp_reflink]+="$(timed sh -c "cp --reflink=always $d/base.raw $d/cpr.raw && sync $d/cpr.raw") "
  t[xfs_cp_sparse]+="$(timed sh -c "cp --reflink=never --sparse=always $d/base.raw $d/cps.raw && sync $d/cps.raw") "
  rm -f "$d"/ours.raw "$d"/cpr.raw "$d"/cps.raw
  d=$WORK/ext4
  out=$("$WORK/clone-bench" clone "$d/base.raw" "$d/ours.raw"); echo "round $r ext4 ours: $out"
  t[ext4_ours]+="$(echo "$out" | cut -d' ' -f2) "
  t[ext4_cp_sparse]+="$(timed sh -c "cp --sparse=always $d/base.raw $d/cps.raw && sync $d/cps.raw") "
  cmp "$d/base.raw" "$d/ours.raw"
  rm -f "$d"/ours.raw "$d"/cps.raw
done
for k in xfs_ours xfs_cp_reflink xfs_cp_sparse ext4_ours ext4_cp_sparse; do
  printf '%-16s median %8.4f s   (rounds: %s)\n' "$k" "$(echo "${t[$k]}" | tr ' ' '\n' | grep . | median)" "${t[$k]}"
done

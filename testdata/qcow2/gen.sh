#!/usr/bin/env bash
# Regenerates the qcow2 test corpus and expected.sha256 with qemu-img/qemu-io
# (qemu-utils). Run from anywhere: bash testdata/qcow2/gen.sh
# Valid images go to valid/, images we must refuse to refuse/.
# expected.sha256 holds sha256sum-format digests of `qemu-img convert -f qcow2 -O raw`.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf valid refuse expected.sha256
mkdir -p valid refuse
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Payloads: incompressible (random) and compressible (text) data.
head -c 262144 /dev/urandom >"$work/rand"
seq 1 60000 >"$work/text"; truncate -s 262144 "$work/text"
# A 1 MiB raw disk mixing text, random, zero and pattern regions.
{
  head -c 131072 "$work/text"
  head -c 65536 /dev/zero
  head -c 65536 "$work/rand"
  head -c 196608 "$work/text" | tail -c 65536
  head -c 262144 /dev/zero
  head -c 200000 "$work/text"
  head -c 4096 "$work/rand"
} >"$work/mixed.raw"
truncate -s 512K "$work/mixed.raw"

q() { qemu-img "$@" >/dev/null; }
io() { local f=$1; shift; local args=(); for c in "$@"; do args+=(-c "$c"); done; qemu-io "${args[@]}" "$f" >/dev/null; }

# Common write pattern: unaligned writes, cluster-crossing writes, random data, zero writes.
writes() {
  local f=$1
  io "$f" "write -P 0xaa 0 4096" "write -P 0x55 1000 3000" "write -s $work/rand 65000 70000" \
    "write -P 0x01 300000 512" "write -z 70000 4096" "write -P 0x7f 450000 74288"
}

# --- versions and cluster sizes
q create -f qcow2 valid/v3-empty.qcow2 512K
q create -f qcow2 -o compat=0.10 valid/v2-data.qcow2 512K; writes valid/v2-data.qcow2
q create -f qcow2 valid/v3-data.qcow2 512K; writes valid/v3-data.qcow2
# (2 MiB clusters make 12 MiB files: the live qemu-img test covers them instead.)
for cs in 512 4096 16384; do
  q create -f qcow2 -o cluster_size=$cs "valid/v3-c$cs.qcow2" 512K; writes "valid/v3-c$cs.qcow2"
done
q create -f qcow2 -o compat=0.10,cluster_size=512 valid/v2-c512.qcow2 512K; writes valid/v2-c512.qcow2

# --- zero flag: zero write over allocated data (keeps or drops the allocation)
q create -f qcow2 valid/v3-zero.qcow2 512K
io valid/v3-zero.qcow2 "write -P 0x33 0 448k" "write -z 0 64k" "write -z -u 128k 64k" "write -z 200000 100000" "discard 320k 64k"

# --- preallocation
for p in metadata falloc full; do q create -f qcow2 -o preallocation=$p "valid/prealloc-$p.qcow2" 256K; done
io valid/prealloc-metadata.qcow2 "write -P 0x44 65536 4096"
io valid/prealloc-full.qcow2 "write -P 0x45 131072 65536"

# --- virtual sizes: not a multiple of the cluster (qemu rounds to 512), and zero
q create -f qcow2 valid/odd-size.qcow2 500001
io valid/odd-size.qcow2 "write -P 0x66 491520 8704" "write -P 0x67 0 100"
q create -f qcow2 valid/size0.qcow2 0

# --- compression: deflate and zstd, incl. tails past EOF and later partial overwrites
q convert -c -O qcow2 "$work/mixed.raw" valid/zlib.qcow2
q convert -c -O qcow2 -o compression_type=zstd "$work/mixed.raw" valid/zstd.qcow2
q convert -c -O qcow2 -o cluster_size=4096 "$work/mixed.raw" valid/zlib-c4k.qcow2
q convert -c -O qcow2 -o cluster_size=512,compression_type=zstd "$work/mixed.raw" valid/zstd-c512.qcow2
for c in zlib zstd; do
  cp "valid/$c.qcow2" "valid/$c-overwritten.qcow2"
  io "valid/$c-overwritten.qcow2" "write -P 0x99 70000 1000" "write -z 131072 4096" "write -c -P 0x12 393216 65536"
done

# --- extended L2 (subclusters), with zero bits and compressed clusters
q create -f qcow2 -o extended_l2=on valid/extl2.qcow2 512K
io valid/extl2.qcow2 "write -P 0x21 0 2048" "write -P 0x22 8192 4096" "write -s $work/rand 200000 50000" \
  "write -z 4096 2048" "write -z 262144 65536" "write -P 0x23 262144 2048" "discard 204800 8192" "write -P 0x24 520192 4096"
q create -f qcow2 -o extended_l2=on,compression_type=zstd,cluster_size=16384 valid/extl2-zstd.qcow2 512K
io valid/extl2-zstd.qcow2 "write -c -s $work/text 0 16384" "write -P 0x31 20000 1000" "write -z 32768 4096" "write -c -s $work/text 49152 16384" "write -P 0x32 50000 10"

# --- internal snapshots: convert the active image
q create -f qcow2 valid/snapshots.qcow2 512K
io valid/snapshots.qcow2 "write -P 0x51 0 128k"
q snapshot -c s1 valid/snapshots.qcow2
io valid/snapshots.qcow2 "write -P 0x52 64k 128k"
q snapshot -c s2 valid/snapshots.qcow2
io valid/snapshots.qcow2 "write -z 0 64k" "write -P 0x53 400k 4k"

# --- dirty bit via lazy refcounts and a simulated crash
q create -f qcow2 -o lazy_refcounts=on valid/dirty.qcow2 512K
qemu-io -c "write -P 0x61 0 128k" -c "write -P 0x62 300000 5000" -c abort valid/dirty.qcow2 >/dev/null 2>&1 || true

# --- tiny images: fast fuzz seeds (kept under 64 KiB)
q create -f qcow2 -o cluster_size=512 valid/tiny-c512.qcow2 32K
io valid/tiny-c512.qcow2 "write -P 0x71 0 700" "write -z 1024 512" "write -c -P 0x72 4096 512" "write -s $work/rand 8000 3000"
q create -f qcow2 -o cluster_size=512,compression_type=zstd valid/tiny-zstd.qcow2 32K
io valid/tiny-zstd.qcow2 "write -c -s $work/text 0 512" "write -c -P 0x73 1024 512" "write -P 0x74 2000 100"
q create -f qcow2 -o cluster_size=512,compat=0.10 valid/tiny-v2.qcow2 16K
io valid/tiny-v2.qcow2 "write -P 0x75 100 1000" "write -c -P 0x76 8192 512"
q snapshot -c snap valid/tiny-v2.qcow2
io valid/tiny-v2.qcow2 "write -P 0x77 512 512"

# --- refusals
q create -f qcow2 -u -b base.qcow2 -F qcow2 refuse/backing.qcow2 1M
q create -f qcow2 --object secret,id=sec0,data=123456 -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 refuse/luks.qcow2 1M
q create -f qcow2 -o data_file=external.raw refuse/datafile.qcow2 1M
rm -f refuse/external.raw
q create -f qcow2 "$work/plain.qcow2" 1M
cp "$work/plain.qcow2" refuse/corrupt.qcow2
printf '\x02' | dd of=refuse/corrupt.qcow2 bs=1 seek=79 conv=notrunc status=none
cp "$work/plain.qcow2" refuse/unknown-incompat.qcow2
printf '\x20' | dd of=refuse/unknown-incompat.qcow2 bs=1 seek=79 conv=notrunc status=none
# AES: qemu 7.2 refuses to create it, so set crypt_method=1 by hand.
cp "$work/plain.qcow2" refuse/aes.qcow2
printf '\x01' | dd of=refuse/aes.qcow2 bs=1 seek=35 conv=notrunc status=none
for f in vmdk vhdx vdi vpc qed; do
  q create -f $f "$work/x.$f" 1M
  head -c 4096 "$work/x.$f" >"refuse/other.$f"
done
q create -f qcow2 -o compat=0.10 "$work/v1.qcow" 1M
cp "$work/v1.qcow" refuse/qcow1.qcow
printf '\x01' | dd of=refuse/qcow1.qcow bs=1 seek=7 conv=notrunc status=none

# Refused at the header: the first cluster is all a test needs.
for f in refuse/*.qcow2 refuse/*.qcow; do truncate -s 65536 "$f"; done

for f in valid/*.qcow2; do
  qemu-img convert -f qcow2 -O raw "$f" "$work/out.raw"
  echo "$(sha256sum <"$work/out.raw" | cut -d' ' -f1)  $(basename "$f")" >>expected.sha256
done
du -sh . >&2

// Package qcow2 reads qcow2 disk images and converts them to raw.
//
// The reader follows QEMU's docs/interop/qcow2.rst: versions 2 and 3, cluster
// sizes 512 B to 2 MiB, the v3 zero flag, extended L2 entries (subclusters),
// deflate and zstd compressed clusters, preallocated images, internal
// snapshots (the active image is read) and dirty images with lazy refcounts.
// It refuses, with errors testable by errors.Is/As, what it cannot or must
// not convert: backing files, encryption, external data files, the corrupt
// bit, unknown incompatible features (FeatureError, ErrUnsupported), other
// image formats (FormatError, ErrNotQcow2), and every structural violation
// (MalformedError, ErrMalformed): offsets past EOF, unaligned tables,
// metadata overlaps and table loops, reserved bits, bad subcluster bitmaps,
// short decompression. Header fields are bounds-checked before anything is
// allocated from them, so hostile files cannot cause large allocations.
//
// Open validates the header and the L1, refcount and snapshot tables; L2
// entries are validated as they are read. ReadAt serves guest data,
// Extents enumerates data, compressed, zero and unallocated ranges, and
// ConvertToRaw writes a sparse raw image, byte-identical to
// `qemu-img convert -f qcow2 -O raw`, atomically (temporary file, fsync,
// rename, directory fsync): workers read and decompress chunks in parallel
// (zlib clusters with a one-shot inflater of its own, zstd with
// klauspost/compress) and one writer writes their non-zero blocks.
package qcow2

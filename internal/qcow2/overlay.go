package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// Overlay layout: the same as `qemu-img create -f qcow2 -b BASE -F FMT`
// writes with 64 KiB clusters — header cluster, refcount table, one
// refcount block, then the (empty) L1 table. Nothing is allocated for guest
// data: every read falls through to the backing file until QEMU writes.
const (
	overlayClusterBits = 16
	overlayCluster     = int64(1) << overlayClusterBits
	overlayRefOrder    = 4 // 16-bit refcounts, QEMU's default
	// overlayMaxSize keeps the L1 table within what QEMU accepts
	// (QCOW_MAX_L1_SIZE) with 64 KiB clusters: 4 PiB.
	overlayMaxSize = int64(maxL1Bytes/8) * (overlayCluster / 8) * overlayCluster
)

// OverlaySpec describes a qcow2 overlay: an empty image whose reads fall
// through to Backing.
type OverlaySpec struct {
	// Backing is the backing file's name as written in the header. QEMU
	// resolves a relative name against the overlay's directory; callers
	// pass an absolute path so the overlay can move.
	Backing string
	// BackingFormat is "raw" or "qcow2" (the backing_fmt extension), so
	// that QEMU never probes the base's format from its content.
	BackingFormat Format
	// VirtualSize is the guest-visible size in bytes; it may exceed the
	// backing file's (the tail reads as zeros).
	VirtualSize int64
}

// WriteOverlay writes a version-3 qcow2 overlay described by spec to w.
func WriteOverlay(w io.Writer, spec OverlaySpec) (int64, error) {
	if spec.Backing == "" {
		return 0, fmt.Errorf("qcow2 overlay: no backing file")
	}
	if spec.BackingFormat != FormatRaw && spec.BackingFormat != FormatQcow2 {
		return 0, fmt.Errorf("qcow2 overlay: backing format %q: want raw or qcow2", spec.BackingFormat)
	}
	if spec.VirtualSize <= 0 || spec.VirtualSize > overlayMaxSize {
		return 0, fmt.Errorf("qcow2 overlay: virtual size %d: want 1 to %d bytes", spec.VirtualSize, overlayMaxSize)
	}
	// QEMU counts disk sizes in 512-byte sectors and rounds up on open;
	// write the rounded size so qemu-img info shows what the guest gets.
	size := (spec.VirtualSize + sectorSize - 1) / sectorSize * sectorSize
	fmtName := string(spec.BackingFormat)
	extLen := 8 + (len(fmtName)+7)/8*8 + 8 // backing_fmt, end marker
	nameOff := v3HeaderLen + extLen
	if len(spec.Backing) > maxBackingNameLen || int64(nameOff+len(spec.Backing)) > overlayCluster {
		return 0, fmt.Errorf("qcow2 overlay: backing file name is %d bytes, more than the %d QEMU accepts", len(spec.Backing), maxBackingNameLen)
	}
	l2Covers := (overlayCluster / 8) * overlayCluster
	l1Size := (size + l2Covers - 1) / l2Covers
	if l1Size > math.MaxUint32 {
		return 0, fmt.Errorf("qcow2 overlay: virtual size %d too large", size)
	}
	l1Clusters := (l1Size*8 + overlayCluster - 1) / overlayCluster
	const refTable, refBlock, l1Table = 1, 2, 3
	clusters := l1Table + l1Clusters

	be := binary.BigEndian
	hdr := make([]byte, overlayCluster)
	copy(hdr, qcowMagic)
	be.PutUint32(hdr[4:], 3)
	be.PutUint64(hdr[8:], uint64(nameOff))
	be.PutUint32(hdr[16:], uint32(len(spec.Backing)))
	be.PutUint32(hdr[20:], overlayClusterBits)
	be.PutUint64(hdr[24:], uint64(size))
	// crypt_method 0 at 32
	be.PutUint32(hdr[36:], uint32(l1Size))
	be.PutUint64(hdr[40:], uint64(l1Table*overlayCluster))
	be.PutUint64(hdr[48:], uint64(refTable*overlayCluster))
	be.PutUint32(hdr[56:], 1) // refcount_table_clusters
	// nb_snapshots, snapshots_offset, feature bits: 0
	be.PutUint32(hdr[96:], overlayRefOrder)
	be.PutUint32(hdr[100:], v3HeaderLen)
	ext := hdr[v3HeaderLen:]
	be.PutUint32(ext[0:], extBackingFormat)
	be.PutUint32(ext[4:], uint32(len(fmtName)))
	copy(ext[8:], fmtName)
	// the end-of-extensions marker is the zeros that follow
	copy(hdr[nameOff:], spec.Backing)

	rt := make([]byte, overlayCluster)
	be.PutUint64(rt, uint64(refBlock*overlayCluster))
	rb := make([]byte, overlayCluster)
	if clusters > overlayCluster/2 {
		return 0, fmt.Errorf("qcow2 overlay: virtual size %d needs more than one refcount block", size)
	}
	for i := range clusters {
		be.PutUint16(rb[2*i:], 1)
	}
	var n int64
	for _, b := range [][]byte{hdr, rt, rb} {
		m, err := w.Write(b)
		n += int64(m)
		if err != nil {
			return n, fmt.Errorf("qcow2 overlay: %w", err)
		}
	}
	zero := make([]byte, overlayCluster) // the L1 table: nothing allocated
	for range l1Clusters {
		m, err := w.Write(zero)
		n += int64(m)
		if err != nil {
			return n, fmt.Errorf("qcow2 overlay: %w", err)
		}
	}
	return n, nil
}

// Backing reports the backing file name and format (from the backing_fmt
// extension; empty if absent) of the qcow2 image in r, and ok=false when the
// image has no backing file or r holds no qcow2 at all. It reads only the
// header cluster and bounds every field by it, so hostile files are safe.
func Backing(r io.ReaderAt) (name string, format Format, ok bool, err error) {
	buf := make([]byte, 4096)
	n, err := r.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return "", "", false, fmt.Errorf("qcow2 header: %w", err)
	}
	buf = buf[:n]
	be := binary.BigEndian
	if n < v2HeaderLen || string(buf[:4]) != qcowMagic {
		return "", "", false, nil
	}
	off, size := be.Uint64(buf[8:]), be.Uint32(buf[16:])
	if off == 0 {
		return "", "", false, nil
	}
	if size > maxBackingNameLen || off > uint64(len(buf)) || off+uint64(size) > uint64(len(buf)) {
		return "", "", false, malformed("header", "backing file name at %#x+%d lies outside the first %d bytes", off, size, len(buf))
	}
	name = string(buf[off : off+uint64(size)])
	if be.Uint32(buf[4:]) >= 3 && n >= v3HeaderLen {
		hl := uint64(be.Uint32(buf[100:]))
		for p := hl; p+8 <= uint64(len(buf)); {
			typ, l := be.Uint32(buf[p:]), uint64(be.Uint32(buf[p+4:]))
			if typ == extEnd || p+8+l > uint64(len(buf)) {
				break
			}
			if typ == extBackingFormat {
				format = Format(buf[p+8 : p+8+l])
			}
			p += 8 + (l+7)/8*8
		}
	}
	return name, format, true, nil
}

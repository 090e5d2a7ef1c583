package qcow2

import (
	"context"
	"iter"
)

// Extent is a run of guest bytes [Offset, Offset+Length) of one kind.
// HostOffset is the file offset of ExtentData (contiguous on the host for
// the whole extent) and -1 for every other kind.
type Extent struct {
	Offset     int64
	Length     int64
	Kind       ExtentKind
	HostOffset int64
}

// Extents yields the guest address space as maximal runs of one kind, in
// order, validating L2 entries on the way. It stops after the first error.
func (img *Image) Extents() iter.Seq2[Extent, error] {
	return func(yield func(Extent, error) bool) {
		size := img.info.VirtualSize
		cs := img.clusterSize
		total := (size + cs - 1) >> img.clusterBits
		// Small batches keep memory low with 2 MiB clusters (262144 entries per table).
		batch := min(img.l2Entries, 4096)
		buf := make([]byte, batch*img.entryBytes)
		ms := make([]mapping, batch)
		cur := Extent{HostOffset: -1}
		emit := func(e Extent) bool {
			if e.Length == 0 {
				return true
			}
			if e.Offset+e.Length > size {
				e.Length = size - e.Offset
			}
			if cur.Length > 0 && cur.Kind == e.Kind && cur.Offset+cur.Length == e.Offset &&
				(e.Kind != ExtentData || cur.HostOffset+cur.Length == e.HostOffset) {
				cur.Length += e.Length
				return true
			}
			if cur.Length > 0 && !yield(cur, nil) {
				return false
			}
			cur = e
			return true
		}
		for first := int64(0); first < total; {
			l1i := first / img.l2Entries
			tableEnd := min((l1i+1)*img.l2Entries, total)
			if img.l1[l1i] == 0 {
				// A whole unallocated L1 range is one step, however large the image.
				if !emit(Extent{Offset: first << img.clusterBits, Length: (tableEnd - first) << img.clusterBits, Kind: ExtentUnallocated, HostOffset: -1}) {
					return
				}
				first = tableEnd
				continue
			}
			n := min(batch, tableEnd-first)
			if err := img.mapClusters(buf, first, ms[:n]); err != nil {
				yield(Extent{}, err)
				return
			}
			for i, m := range ms[:n] {
				off := (first + int64(i)) << img.clusterBits
				if !img.emitCluster(off, m, emit) {
					return
				}
			}
			first += n
		}
		if cur.Length > 0 {
			yield(cur, nil)
		}
	}
}

func (img *Image) emitCluster(off int64, m mapping, emit func(Extent) bool) bool {
	cs := img.clusterSize
	switch {
	case m.kind == ExtentData && m.sub:
		sc := img.subSize
		for s := int64(0); s < 32; s++ {
			e := Extent{Offset: off + s*sc, Length: sc, Kind: ExtentUnallocated, HostOffset: -1}
			switch {
			case m.alloc&(1<<s) != 0:
				e.Kind, e.HostOffset = ExtentData, m.host+s*sc
			case m.zero&(1<<s) != 0:
				e.Kind = ExtentZero
			}
			if off+s*sc >= img.info.VirtualSize {
				return true
			}
			if !emit(e) {
				return false
			}
		}
		return true
	case m.kind == ExtentZero && m.sub:
		// Extended L2 without a host cluster: zero bits say zero, the rest is unallocated.
		return img.emitZeroBits(off, m, emit)
	case m.kind == ExtentData:
		return emit(Extent{Offset: off, Length: cs, Kind: ExtentData, HostOffset: m.host})
	default:
		return emit(Extent{Offset: off, Length: cs, Kind: m.kind, HostOffset: -1})
	}
}

func (img *Image) emitZeroBits(off int64, m mapping, emit func(Extent) bool) bool {
	sc := img.subSize
	for s := int64(0); s < 32; s++ {
		if off+s*sc >= img.info.VirtualSize {
			return true
		}
		k := ExtentUnallocated
		if m.zero&(1<<s) != 0 {
			k = ExtentZero
		}
		if !emit(Extent{Offset: off + s*sc, Length: sc, Kind: k, HostOffset: -1}) {
			return false
		}
	}
	return true
}

// AllocatedBytes counts the guest bytes backed by data or compressed
// clusters. A raw conversion writes at most this much (it leaves zero blocks
// as holes), so a caller can check free space against it rather than
// against the virtual size.
func (img *Image) AllocatedBytes(ctx context.Context) (int64, error) {
	var n int64
	for e, err := range img.Extents() {
		if err != nil {
			return 0, err
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if e.Kind == ExtentData || e.Kind == ExtentCompressed {
			n += e.Length
		}
	}
	return n, nil
}

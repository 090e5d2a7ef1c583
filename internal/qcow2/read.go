package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"github.com/klauspost/compress/zstd"
)

// ExtentKind classifies a guest range.
type ExtentKind uint8

const (
	// ExtentUnallocated reads as zeros (no backing file is supported).
	ExtentUnallocated ExtentKind = iota
	// ExtentZero is explicitly zero (v3 zero flag or extended-L2 zero bits).
	ExtentZero
	// ExtentData is stored uncompressed at HostOffset.
	ExtentData
	// ExtentCompressed is stored in compressed clusters.
	ExtentCompressed
)

func (k ExtentKind) String() string {
	switch k {
	case ExtentUnallocated:
		return "unallocated"
	case ExtentZero:
		return "zero"
	case ExtentData:
		return "data"
	case ExtentCompressed:
		return "compressed"
	}
	return fmt.Sprintf("ExtentKind(%d)", uint8(k))
}

// mapping is the decoded, validated L2 entry of one guest cluster.
type mapping struct {
	kind   ExtentKind // for extended L2 data clusters: ExtentData with subclusters
	host   int64      // data: cluster offset; compressed: byte offset
	csize  int64      // compressed: bytes to read (already clamped to EOF)
	alloc  uint32     // extended L2: allocated subclusters
	zero   uint32     // extended L2: subclusters that read as zero
	sub    bool       // extended L2 data cluster (use alloc)
	hasRaw bool       // whether any byte comes from the file
}

// guestBytes is how many bytes of guest cluster idx lie within the virtual size.
func (img *Image) guestBytes(idx int64) int64 {
	start := idx << img.clusterBits
	if rest := img.info.VirtualSize - start; rest < img.clusterSize {
		return rest
	}
	return img.clusterSize
}

// decodeEntry validates and decodes the L2 entry (w0, w1) of guest cluster idx.
func (img *Image) decodeEntry(idx int64, w0, w1 uint64) (mapping, error) {
	what := func() string { return fmt.Sprintf("L2 entry for guest offset %#x", idx<<img.clusterBits) }
	cs := img.clusterSize
	if w0&flagCompressed != 0 {
		if w0&flagCopied != 0 {
			return mapping{}, malformed(what(), "compressed cluster has COPIED set (%#x)", w0)
		}
		if img.extL2 && w1 != 0 {
			return mapping{}, malformed(what(), "compressed cluster has a subcluster bitmap %#x", w1)
		}
		x := 62 - (img.clusterBits - 8)
		host := w0 & (uint64(1)<<x - 1)
		sectors := (w0>>x)&(uint64(1)<<(img.clusterBits-8)-1) + 1
		size := int64(sectors*512) - int64(host&511)
		if size <= 0 || size > 2*cs {
			return mapping{}, malformed(what(), "compressed size %d out of range", size)
		}
		if host >= uint64(img.fileSize) || host < uint64(cs) {
			return mapping{}, malformed(what(), "compressed data at %#x outside the file's data area", host)
		}
		// The last compressed cluster may run past EOF; only what exists is read.
		if avail := img.fileSize - int64(host); size > avail {
			size = avail
		}
		if r, ok := img.overlapsMetadata(int64(host), int64(host)+size); ok {
			return mapping{}, malformed(what(), "compressed data at %#x overlaps %s", host, r.name)
		}
		return mapping{kind: ExtentCompressed, host: int64(host), csize: size, hasRaw: true}, nil
	}
	if w0&l2Reserved != 0 {
		return mapping{}, malformed(what(), "reserved bits set (%#x)", w0)
	}
	host := w0 & offsetMask
	if host == 0 && w0&flagCopied != 0 {
		return mapping{}, malformed(what(), "COPIED set without a host offset")
	}
	if host%uint64(cs) != 0 {
		return mapping{}, malformed(what(), "host offset %#x not cluster-aligned", host)
	}
	if !img.extL2 {
		if w0&flagZero != 0 {
			if !img.v3 {
				return mapping{}, malformed(what(), "zero flag in a version 2 image")
			}
			return mapping{kind: ExtentZero}, nil
		}
		if host == 0 {
			return mapping{kind: ExtentUnallocated}, nil
		}
		if err := img.checkData(what, host, img.guestBytes(idx)); err != nil {
			return mapping{}, err
		}
		return mapping{kind: ExtentData, host: int64(host), hasRaw: true}, nil
	}

	// Extended L2: the descriptor's bit 0 is ignored, the bitmap decides.
	alloc, zero := uint32(w1), uint32(w1>>32)
	if host == 0 {
		if alloc != 0 {
			return mapping{}, malformed(what(), "subclusters allocated (%#x) without a host offset", alloc)
		}
		if zero == 0 {
			return mapping{kind: ExtentUnallocated}, nil
		}
		if zero == 0xffffffff {
			return mapping{kind: ExtentZero}, nil
		}
		return mapping{kind: ExtentZero, sub: true, zero: zero}, nil // partly zero, partly unallocated: all zeros
	}
	if alloc&zero != 0 {
		return mapping{}, malformed(what(), "subclusters both allocated and zero (bitmap %#x)", w1)
	}
	if alloc == 0 {
		if zero == 0xffffffff {
			return mapping{kind: ExtentZero}, nil
		}
		return mapping{kind: ExtentUnallocated}, nil
	}
	// Only allocated subclusters must exist in the file.
	need := img.guestBytes(idx)
	last := int64(31 - bits.LeadingZeros32(alloc))
	end := (last + 1) * img.subSize
	if end > need {
		end = need
	}
	if err := img.checkData(what, host, end); err != nil {
		return mapping{}, err
	}
	return mapping{kind: ExtentData, host: int64(host), alloc: alloc, zero: zero, sub: true, hasRaw: true}, nil
}

// checkData verifies a data cluster at host: the bytes read from it lie in
// the file and the cluster overlaps no metadata.
func (img *Image) checkData(what func() string, host uint64, readBytes int64) error {
	if host < uint64(img.clusterSize) {
		return malformed(what(), "host offset %#x points into the header cluster", host)
	}
	if !img.inFile(host, uint64(readBytes)) {
		return malformed(what(), "data cluster at %#x lies past end of file (%d bytes)", host, img.fileSize)
	}
	if r, ok := img.overlapsMetadata(int64(host), int64(host)+img.clusterSize); ok {
		return malformed(what(), "data cluster at %#x overlaps %s at %#x", host, r.name, r.start)
	}
	return nil
}

// l2Table reads the L2 table for L1 index l1i into buf (len cluster size)
// and decodes the entries for guest clusters [first, first+len(out)).
func (img *Image) mapClusters(buf []byte, first int64, out []mapping) error {
	perL2 := img.l2Entries
	for i := 0; i < len(out); {
		idx := first + int64(i)
		l1i := idx / perL2
		l2i := idx % perL2
		n := perL2 - l2i
		if rem := int64(len(out) - i); n > rem {
			n = rem
		}
		l2off := img.l1[l1i]
		if l2off == 0 {
			clear(out[i : i+int(n)])
			i += int(n)
			continue
		}
		raw := buf[:n*img.entryBytes]
		if err := img.readFull(fmt.Sprintf("L2 table %d", l1i), raw, int64(l2off)+l2i*img.entryBytes); err != nil {
			return err
		}
		for j := int64(0); j < n; j++ {
			var w0, w1 uint64
			if img.extL2 {
				w0 = binary.BigEndian.Uint64(raw[j*16:])
				w1 = binary.BigEndian.Uint64(raw[j*16+8:])
			} else {
				w0 = binary.BigEndian.Uint64(raw[j*8:])
			}
			m, err := img.decodeEntry(idx+j, w0, w1)
			if err != nil {
				return err
			}
			out[i+int(j)] = m
		}
		i += int(n)
	}
	return nil
}

// decoder holds per-goroutine decompression state and scratch space.
type decoder struct {
	img   *Image
	cbuf  []byte
	src   bytes.Reader
	flate *inflater
	zstd  *zstd.Decoder
}

func newDecoder(img *Image) *decoder { return &decoder{img: img} }

func (d *decoder) close() {
	if d.zstd != nil {
		d.zstd.Close()
	}
}

// decompress fills dst (exactly one cluster) from the compressed cluster m.
func (d *decoder) decompress(dst []byte, m mapping) error {
	img := d.img
	if cap(d.cbuf) < int(m.csize) {
		d.cbuf = make([]byte, 2*img.clusterSize)
	}
	in := d.cbuf[:m.csize]
	if err := img.readFull("compressed cluster", in, m.host); err != nil {
		return err
	}
	if img.info.CompressionType == CompressionDeflate {
		if d.flate == nil {
			d.flate = newInflater()
		}
		if err := d.flate.inflate(dst, in); err != nil {
			reason := "decompression failed"
			if errors.Is(err, errInflateShort) {
				reason = "decompressed data shorter than a cluster"
			}
			return &MalformedError{What: fmt.Sprintf("compressed cluster at %#x", m.host), Reason: reason, Err: err}
		}
		return nil
	}
	// zstd (Open accepts no other compression type).
	if d.zstd == nil {
		z, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(uint64(max(img.clusterSize, 1<<20))*2),
		)
		if err != nil {
			return err
		}
		d.zstd = z
	}
	d.src.Reset(in)
	if err := d.zstd.Reset(&d.src); err != nil {
		return &MalformedError{What: fmt.Sprintf("compressed cluster at %#x", m.host), Reason: "zstd", Err: err}
	}
	// Exactly one cluster must come out; trailing input (padding, the next
	// packed cluster) is ignored.
	if _, err := io.ReadFull(d.zstd, dst); err != nil {
		reason := "decompression failed"
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			reason = "decompressed data shorter than a cluster"
		}
		return &MalformedError{What: fmt.Sprintf("compressed cluster at %#x", m.host), Reason: reason, Err: err}
	}
	return nil
}

// fill writes the guest data of consecutive clusters described by ms,
// starting at guest cluster first, into dst (len(ms) clusters long). It
// coalesces reads of host-contiguous data clusters. It reports whether any
// cluster may hold non-zero bytes via the filled slice (same length as ms).
// Clusters that read as zeros are cleared in dst only if clearZero is set: a
// caller that skips the clusters filled marks false need not pay for it
// (a memclr of every hole was 6% of a conversion's CPU).
func (d *decoder) fill(dst []byte, first int64, ms []mapping, filled []bool, clearZero bool) error {
	img := d.img
	cs := img.clusterSize
	runStart, runHost, runLen := int64(-1), int64(0), int64(0)
	flush := func() error {
		if runLen == 0 {
			return nil
		}
		err := img.readFull("data cluster", dst[runStart:runStart+runLen], runHost)
		runStart, runLen = -1, 0
		return err
	}
	for i, m := range ms {
		off := int64(i) * cs
		c := dst[off : off+cs]
		filled[i] = m.hasRaw
		switch {
		case m.kind == ExtentData && !m.sub:
			need := img.guestBytes(first + int64(i))
			if runLen > 0 && runStart+runLen == off && runHost+runLen == m.host && runLen%cs == 0 {
				runLen += need
			} else {
				if err := flush(); err != nil {
					return err
				}
				runStart, runHost, runLen = off, m.host, need
			}
			if need < cs {
				clear(c[need:])
			}
			continue
		case m.kind == ExtentData: // extended L2 subclusters
			if err := flush(); err != nil {
				return err
			}
			if err := d.fillSubclusters(c, first+int64(i), m); err != nil {
				return err
			}
		case m.kind == ExtentCompressed:
			if err := flush(); err != nil {
				return err
			}
			if err := d.decompress(c, m); err != nil {
				return err
			}
		default:
			if clearZero {
				clear(c)
			}
		}
	}
	return flush()
}

func (d *decoder) fillSubclusters(c []byte, idx int64, m mapping) error {
	img := d.img
	need := img.guestBytes(idx)
	sc := img.subSize
	for s := int64(0); s < 32; {
		if m.alloc&(1<<s) == 0 {
			clear(c[s*sc : (s+1)*sc])
			s++
			continue
		}
		e := s
		for e < 32 && m.alloc&(1<<e) != 0 {
			e++
		}
		lo, hi := s*sc, e*sc
		if hi > need {
			clear(c[max(lo, need):hi])
			hi = need
		}
		if lo < hi {
			if err := img.readFull("data subcluster", c[lo:hi], m.host+lo); err != nil {
				return err
			}
		}
		s = e
	}
	return nil
}

// ReadAt reads guest data, implementing io.ReaderAt over the virtual disk.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qcow2: negative offset %d", off)
	}
	size := img.info.VirtualSize
	if off >= size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := len(p)
	if rest := size - off; int64(want) > rest {
		p = p[:rest]
	}
	img.decMu.Lock()
	defer img.decMu.Unlock()
	if img.dec == nil {
		img.dec = newDecoder(img)
	}
	cs := img.clusterSize
	cluster := make([]byte, cs)
	l2buf := make([]byte, img.entryBytes)
	var ms [1]mapping
	var filled [1]bool
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		idx := pos >> img.clusterBits
		if err := img.mapClusters(l2buf, idx, ms[:]); err != nil {
			return n, err
		}
		if err := img.dec.fill(cluster, idx, ms[:], filled[:], true); err != nil {
			return n, err
		}
		n += copy(p[n:], cluster[pos-idx<<img.clusterBits:])
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

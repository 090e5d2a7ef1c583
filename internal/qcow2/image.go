package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"slices"
	"strings"
	"sync"
)

// Limits taken from QEMU (block/qcow2.h); anything beyond them is refused
// before a single byte is allocated for it.
const (
	maxL1Bytes        = 32 << 20 // QCOW_MAX_L1_SIZE
	maxRefTableBytes  = 8 << 20  // QCOW_MAX_REFTABLE_SIZE
	maxSnapshots      = 65536    // QCOW_MAX_SNAPSHOTS
	maxSnapshotExtra  = 1024     // QCOW_MAX_SNAPSHOT_EXTRA_DATA
	maxBackingNameLen = 1023
	minClusterBits    = 9
	maxClusterBits    = 21
	v2HeaderLen       = 72
	v3HeaderLen       = 104
	sectorSize        = 512 // QEMU's unit of disk size (BDRV_SECTOR_SIZE)
)

// Table entry bits (qcow2.rst "Cluster mapping").
const (
	flagCopied     = uint64(1) << 63
	flagCompressed = uint64(1) << 62
	flagZero       = uint64(1)
	offsetMask     = uint64(0x00fffffffffffe00) // bits 9–55
	l1Reserved     = ^(offsetMask | flagCopied)
	l2Reserved     = uint64(0x3f000000000001fe) // bits 1–8 and 56–61
	refTableRsvd   = uint64(0x1ff)
)

// Incompatible feature bits.
const (
	IncompatDirty        = uint64(1) << 0
	IncompatCorrupt      = uint64(1) << 1
	IncompatExternalData = uint64(1) << 2
	IncompatCompression  = uint64(1) << 3
	IncompatExtendedL2   = uint64(1) << 4
	incompatKnown        = IncompatDirty | IncompatCorrupt | IncompatExternalData | IncompatCompression | IncompatExtendedL2

	CompatLazyRefcounts = uint64(1) << 0
	AutoclearBitmaps    = uint64(1) << 0
	AutoclearRawData    = uint64(1) << 1
)

// Header extension types.
const (
	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureNames  = 0x6803f857
	extBitmaps       = 0x23852875
	extLUKS          = 0x0537be77
	extDataFile      = 0x44415441
)

// CompressionType is the algorithm of compressed clusters.
type CompressionType uint8

const (
	CompressionDeflate CompressionType = 0 // raw RFC 1951; qemu-img calls it "zlib"
	CompressionZstd    CompressionType = 1
)

// String returns the name qemu-img info prints.
func (c CompressionType) String() string {
	switch c {
	case CompressionDeflate:
		return "zlib"
	case CompressionZstd:
		return "zstd"
	}
	return fmt.Sprintf("unknown(%d)", uint8(c))
}

// Info describes an opened qcow2 image, much like `qemu-img info`.
type Info struct {
	Format          Format          `json:"format"`
	Version         int             `json:"version"`
	VirtualSize     int64           `json:"virtual_size"`
	ClusterSize     int64           `json:"cluster_size"`
	CompressionType CompressionType `json:"-"`
	Compression     string          `json:"compression_type"`
	// Raw feature bit masks from the header (zero for version 2).
	IncompatibleFeatures uint64 `json:"incompatible_features"`
	CompatibleFeatures   uint64 `json:"compatible_features"`
	AutoclearFeatures    uint64 `json:"autoclear_features"`
	Dirty                bool   `json:"dirty"`
	LazyRefcounts        bool   `json:"lazy_refcounts"`
	ExtendedL2           bool   `json:"extended_l2"`
	Bitmaps              bool   `json:"bitmaps"`
	RefcountBits         int    `json:"refcount_bits"`
	Snapshots            int    `json:"snapshots"`
	// FileSize is the size of the qcow2 file itself.
	FileSize int64 `json:"file_size"`
}

type header struct {
	version         uint32
	backingOffset   uint64
	backingSize     uint32
	clusterBits     uint32
	size            uint64
	cryptMethod     uint32
	l1Size          uint32
	l1Offset        uint64
	refTableOffset  uint64
	refTableCluster uint32
	nbSnapshots     uint32
	snapshotsOffset uint64
	incompat        uint64
	compat          uint64
	autoclear       uint64
	refcountOrder   uint32
	headerLength    uint32
	compression     uint8
}

// region is a host byte range holding metadata; kept sorted by start.
type region struct {
	start, end int64
	name       string
}

// Image is an opened qcow2 image. Its methods are safe for concurrent use.
type Image struct {
	r        io.ReaderAt
	fileSize int64
	hdr      header
	info     Info

	clusterBits uint
	clusterSize int64
	l2Entries   int64 // entries per L2 table
	entryBytes  int64 // 8, or 16 with extended L2
	extL2       bool
	subSize     int64 // subcluster size with extended L2
	v3          bool

	l1   []uint64 // active L1 entries that cover the virtual size
	meta []region // every metadata range, sorted, pairwise disjoint

	closer io.Closer

	decMu sync.Mutex
	dec   *decoder // for ReadAt; conversion workers have their own
}

// OpenFile opens a qcow2 image by path. Close releases the file.
func OpenFile(path string) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	img, err := Open(f, st.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	img.closer = f
	return img, nil
}

// Close releases the file opened by OpenFile; for images from Open it is a no-op.
func (img *Image) Close() error {
	img.decMu.Lock()
	if img.dec != nil {
		img.dec.close()
		img.dec = nil
	}
	img.decMu.Unlock()
	if img.closer != nil {
		return img.closer.Close()
	}
	return nil
}

// Info returns the image's header facts.
func (img *Image) Info() Info { return img.info }

// Size returns the virtual (guest) size in bytes.
func (img *Image) Size() int64 { return img.info.VirtualSize }

// ClusterSize returns the cluster size in bytes.
func (img *Image) ClusterSize() int64 { return img.clusterSize }

// readFull reads exactly len(p) bytes at off, which the caller has already
// checked lie inside the file; a short read means the file changed or lied.
func (img *Image) readFull(what string, p []byte, off int64) error {
	n, err := img.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return &MalformedError{What: what, Reason: fmt.Sprintf("read %d bytes at offset %#x", len(p), off), Err: err}
}

// inFile reports whether [off, off+n) lies inside the file, without overflow.
func (img *Image) inFile(off, n uint64) bool {
	fs := uint64(img.fileSize)
	return off <= fs && n <= fs-off
}

// Open validates the header, extensions, L1 table, refcount table and snapshot
// table of a qcow2 image of the given size read through r. Guest data and L2
// tables are validated as they are read.
func Open(r io.ReaderAt, size int64) (*Image, error) {
	format, err := DetectFormat(r, size)
	if err != nil {
		return nil, err
	}
	if format != FormatQcow2 {
		return nil, &FormatError{Format: format}
	}
	img := &Image{r: r, fileSize: size}
	if err := img.parseHeader(); err != nil {
		return nil, err
	}
	if err := img.loadTables(); err != nil {
		return nil, err
	}
	return img, nil
}

func (img *Image) parseHeader() error {
	if img.fileSize < v2HeaderLen {
		return malformed("header", "file is %d bytes, shorter than the %d-byte header", img.fileSize, v2HeaderLen)
	}
	var buf [v3HeaderLen + 8]byte
	n := int64(len(buf))
	if img.fileSize < n {
		n = img.fileSize
	}
	if err := img.readFull("header", buf[:n], 0); err != nil {
		return err
	}
	be := binary.BigEndian
	h := &img.hdr
	h.version = be.Uint32(buf[4:])
	h.backingOffset = be.Uint64(buf[8:])
	h.backingSize = be.Uint32(buf[16:])
	h.clusterBits = be.Uint32(buf[20:])
	h.size = be.Uint64(buf[24:])
	h.cryptMethod = be.Uint32(buf[32:])
	h.l1Size = be.Uint32(buf[36:])
	h.l1Offset = be.Uint64(buf[40:])
	h.refTableOffset = be.Uint64(buf[48:])
	h.refTableCluster = be.Uint32(buf[56:])
	h.nbSnapshots = be.Uint32(buf[60:])
	h.snapshotsOffset = be.Uint64(buf[64:])

	switch h.version {
	case 2:
		h.refcountOrder = 4
		h.headerLength = v2HeaderLen
	case 3:
		if n < v3HeaderLen {
			return malformed("header", "version 3 header needs %d bytes, file has %d", v3HeaderLen, n)
		}
		h.incompat = be.Uint64(buf[72:])
		h.compat = be.Uint64(buf[80:])
		h.autoclear = be.Uint64(buf[88:])
		h.refcountOrder = be.Uint32(buf[96:])
		h.headerLength = be.Uint32(buf[100:])
	default:
		return malformed("header", "version %d (want 2 or 3)", h.version)
	}
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return malformed("header", "cluster_bits %d out of range %d..%d", h.clusterBits, minClusterBits, maxClusterBits)
	}
	img.clusterBits = uint(h.clusterBits)
	img.clusterSize = int64(1) << h.clusterBits
	cs := img.clusterSize

	if h.version == 3 {
		if h.headerLength < v3HeaderLen || h.headerLength%8 != 0 || int64(h.headerLength) > cs {
			return malformed("header", "header_length %d (want >= %d, a multiple of 8, <= cluster size %d)", h.headerLength, v3HeaderLen, cs)
		}
		if int64(h.headerLength) > img.fileSize {
			return malformed("header", "header_length %d exceeds file size %d", h.headerLength, img.fileSize)
		}
		if h.headerLength > v3HeaderLen {
			h.compression = buf[104]
		}
		if h.refcountOrder > 6 {
			return malformed("header", "refcount_order %d > 6", h.refcountOrder)
		}
	}

	// Refusals of whole features come first: they say more than any
	// structural complaint about the same image would.
	if h.incompat&IncompatCorrupt != 0 {
		return &FeatureError{Kind: ErrCorruptBit, Detail: "(QEMU marked the image corrupt; run qemu-img check -r)"}
	}
	if unknown := h.incompat &^ incompatKnown; unknown != 0 {
		return &FeatureError{Kind: ErrUnknownFeature, Detail: fmt.Sprintf("bits %s", bitList(unknown))}
	}
	switch h.cryptMethod {
	case 0:
	case 1:
		return &FeatureError{Kind: ErrEncrypted, Detail: "(AES-CBC)"}
	case 2:
		return &FeatureError{Kind: ErrEncrypted, Detail: "(LUKS)"}
	default:
		return malformed("header", "unknown crypt_method %d", h.cryptMethod)
	}

	// Cluster 0 holds the header, its extensions and the backing file name.
	c0 := cs
	if img.fileSize < c0 {
		c0 = img.fileSize
	}
	cluster0 := make([]byte, c0)
	if err := img.readFull("header cluster", cluster0, 0); err != nil {
		return err
	}
	dataFile, err := img.parseExtensions(cluster0)
	if err != nil {
		return err
	}
	if h.incompat&IncompatExternalData != 0 {
		return &FeatureError{Kind: ErrExternalDataFile, Detail: quoteOrUnknown(dataFile)}
	}
	if h.autoclear&AutoclearRawData != 0 {
		return malformed("header", "autoclear raw-external-data bit without an external data file")
	}
	if h.backingOffset != 0 {
		if h.backingSize > maxBackingNameLen {
			return malformed("header", "backing_file_size %d > %d", h.backingSize, maxBackingNameLen)
		}
		end := h.backingOffset + uint64(h.backingSize)
		if h.backingOffset < uint64(h.headerLength) || end > uint64(c0) {
			return &FeatureError{Kind: ErrBackingFile, Detail: fmt.Sprintf("(name at %#x+%d lies outside the header cluster)", h.backingOffset, h.backingSize)}
		}
		return &FeatureError{Kind: ErrBackingFile, Detail: fmt.Sprintf("%q", cluster0[h.backingOffset:end])}
	}

	extL2 := h.incompat&IncompatExtendedL2 != 0
	if extL2 && h.clusterBits < 14 {
		return malformed("header", "extended L2 needs cluster_bits >= 14, have %d", h.clusterBits)
	}
	if h.compression > 1 {
		return &FeatureError{Kind: ErrUnknownFeature, Detail: fmt.Sprintf("compression type %d", h.compression)}
	}
	if (h.compression != 0) != (h.incompat&IncompatCompression != 0) {
		return malformed("header", "compression_type %d disagrees with incompatible bit 3", h.compression)
	}
	if h.size > 1<<62 {
		return malformed("header", "virtual size %d is absurd", h.size)
	}

	img.v3 = h.version == 3
	img.extL2 = extL2
	img.entryBytes = 8
	if extL2 {
		img.entryBytes = 16
		img.subSize = cs / 32
	}
	img.l2Entries = cs / img.entryBytes
	// QEMU counts a disk in 512-byte sectors and drops a partial last one:
	// for a header saying 1000001 bytes, qemu-img info and convert give
	// 999936. The guest never sees the tail, so neither does our output.
	img.info = Info{
		Format:               FormatQcow2,
		Version:              int(h.version),
		VirtualSize:          int64(h.size) &^ (sectorSize - 1),
		ClusterSize:          cs,
		CompressionType:      CompressionType(h.compression),
		Compression:          CompressionType(h.compression).String(),
		IncompatibleFeatures: h.incompat,
		CompatibleFeatures:   h.compat,
		AutoclearFeatures:    h.autoclear,
		Dirty:                h.incompat&IncompatDirty != 0,
		LazyRefcounts:        h.compat&CompatLazyRefcounts != 0,
		ExtendedL2:           extL2,
		Bitmaps:              h.autoclear&AutoclearBitmaps != 0,
		RefcountBits:         1 << h.refcountOrder,
		Snapshots:            int(h.nbSnapshots),
		FileSize:             img.fileSize,
	}
	return nil
}

// parseExtensions walks the header extensions inside cluster 0 and returns
// the external data file name if one is recorded.
func (img *Image) parseExtensions(c0 []byte) (dataFile string, err error) {
	off := int64(img.hdr.headerLength)
	cs := img.clusterSize
	for {
		if off+8 > cs {
			return dataFile, nil // ran to the end of the cluster without a terminator
		}
		if off+8 > int64(len(c0)) {
			return "", malformed("header extension", "at %#x runs past end of file", off)
		}
		typ := binary.BigEndian.Uint32(c0[off:])
		length := int64(binary.BigEndian.Uint32(c0[off+4:]))
		if typ == extEnd {
			return dataFile, nil
		}
		dataStart := off + 8
		padded := (length + 7) &^ 7
		if padded > cs-dataStart {
			return "", malformed("header extension", "%#x at %#x with length %d extends outside cluster 0", typ, off, length)
		}
		if dataStart+length > int64(len(c0)) {
			return "", malformed("header extension", "%#x at %#x runs past end of file", typ, off)
		}
		if typ == extDataFile {
			dataFile = string(c0[dataStart : dataStart+length])
		}
		off = dataStart + padded
	}
}

func (img *Image) loadTables() error {
	h := &img.hdr
	cs := img.clusterSize
	var regions []region
	regions = append(regions, region{0, cs, "header cluster"})

	// L1 table.
	guestPerL2 := uint64(cs) * uint64(img.l2Entries)
	need := (h.size + guestPerL2 - 1) / guestPerL2
	if uint64(h.l1Size)*8 > maxL1Bytes {
		return malformed("L1 table", "l1_size %d entries exceeds the %d MiB limit", h.l1Size, maxL1Bytes>>20)
	}
	if uint64(h.l1Size) < need {
		return malformed("L1 table", "l1_size %d too small for virtual size %d (need %d)", h.l1Size, h.size, need)
	}
	if h.l1Offset%uint64(cs) != 0 {
		return malformed("L1 table", "offset %#x not cluster-aligned", h.l1Offset)
	}
	if h.l1Size > 0 {
		l1Bytes := uint64(h.l1Size) * 8
		if h.l1Offset == 0 || !img.inFile(h.l1Offset, l1Bytes) {
			return malformed("L1 table", "%d entries at %#x lie past end of file (%d bytes)", h.l1Size, h.l1Offset, img.fileSize)
		}
		regions = append(regions, region{int64(h.l1Offset), int64(h.l1Offset + roundUp(l1Bytes, uint64(cs))), "L1 table"})
		// Only the entries covering the virtual size matter.
		raw := make([]byte, need*8)
		if err := img.readFull("L1 table", raw, int64(h.l1Offset)); err != nil {
			return err
		}
		img.l1 = make([]uint64, need)
		for i := range img.l1 {
			e := binary.BigEndian.Uint64(raw[i*8:])
			off := e & offsetMask
			switch {
			case e&l1Reserved != 0:
				return malformed("L1 table", "entry %d (%#x) has reserved bits set", i, e)
			case off == 0 && e&flagCopied != 0:
				return malformed("L1 table", "entry %d has COPIED set without an L2 offset", i)
			case off%uint64(cs) != 0:
				return malformed("L1 table", "entry %d: L2 table offset %#x not cluster-aligned", i, off)
			case off != 0 && !img.inFile(off, uint64(cs)):
				return malformed("L1 table", "entry %d: L2 table at %#x lies past end of file", i, off)
			}
			img.l1[i] = off
			if off != 0 {
				regions = append(regions, region{int64(off), int64(off) + cs, fmt.Sprintf("L2 table %d", i)})
			}
		}
	}

	// Refcount table and blocks: not needed to read, but data must not overlap them.
	if h.refTableOffset%uint64(cs) != 0 {
		return malformed("refcount table", "offset %#x not cluster-aligned", h.refTableOffset)
	}
	rtBytes := uint64(h.refTableCluster) * uint64(cs)
	if rtBytes > maxRefTableBytes {
		return malformed("refcount table", "%d clusters exceed the %d MiB limit", h.refTableCluster, maxRefTableBytes>>20)
	}
	if rtBytes > 0 {
		if h.refTableOffset == 0 || !img.inFile(h.refTableOffset, rtBytes) {
			return malformed("refcount table", "%d bytes at %#x lie past end of file", rtBytes, h.refTableOffset)
		}
		regions = append(regions, region{int64(h.refTableOffset), int64(h.refTableOffset + rtBytes), "refcount table"})
		raw := make([]byte, rtBytes)
		if err := img.readFull("refcount table", raw, int64(h.refTableOffset)); err != nil {
			return err
		}
		for i := 0; i < len(raw); i += 8 {
			e := binary.BigEndian.Uint64(raw[i:])
			if e == 0 {
				continue
			}
			if e&refTableRsvd != 0 || e%uint64(cs) != 0 {
				return malformed("refcount table", "entry %d: block offset %#x not cluster-aligned", i/8, e)
			}
			if !img.inFile(e, uint64(cs)) {
				return malformed("refcount table", "entry %d: block at %#x lies past end of file", i/8, e)
			}
			regions = append(regions, region{int64(e), int64(e) + cs, fmt.Sprintf("refcount block %d", i/8)})
		}
	}

	snapRegions, err := img.scanSnapshots()
	if err != nil {
		return err
	}
	regions = append(regions, snapRegions...)

	slices.SortFunc(regions, func(a, b region) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	for i := 1; i < len(regions); i++ {
		if regions[i].start < regions[i-1].end {
			return malformed("metadata", "%s at %#x overlaps %s at %#x", regions[i].name, regions[i].start, regions[i-1].name, regions[i-1].start)
		}
	}
	img.meta = regions
	return nil
}

// scanSnapshots validates the snapshot table and returns it and the
// snapshots' L1 tables as metadata regions.
func (img *Image) scanSnapshots() ([]region, error) {
	h := &img.hdr
	if h.nbSnapshots == 0 {
		return nil, nil
	}
	cs := uint64(img.clusterSize)
	if h.nbSnapshots > maxSnapshots {
		return nil, malformed("snapshot table", "nb_snapshots %d > %d", h.nbSnapshots, maxSnapshots)
	}
	if h.snapshotsOffset == 0 || h.snapshotsOffset%cs != 0 {
		return nil, malformed("snapshot table", "offset %#x not cluster-aligned", h.snapshotsOffset)
	}
	regions := make([]region, 0, 1)
	off := h.snapshotsOffset
	var fixed [40]byte
	for i := uint32(0); i < h.nbSnapshots; i++ {
		if !img.inFile(off, uint64(len(fixed))) {
			return nil, malformed("snapshot table", "entry %d at %#x lies past end of file", i, off)
		}
		if err := img.readFull("snapshot table", fixed[:], int64(off)); err != nil {
			return nil, err
		}
		be := binary.BigEndian
		l1Off := be.Uint64(fixed[0:])
		l1Size := uint64(be.Uint32(fixed[8:]))
		idLen := uint64(be.Uint16(fixed[12:]))
		nameLen := uint64(be.Uint16(fixed[14:]))
		extra := uint64(be.Uint32(fixed[36:]))
		if extra > maxSnapshotExtra {
			return nil, malformed("snapshot table", "entry %d: extra data size %d > %d", i, extra, maxSnapshotExtra)
		}
		entryLen := roundUp(40+extra+idLen+nameLen, 8)
		if !img.inFile(off, entryLen) {
			return nil, malformed("snapshot table", "entry %d at %#x lies past end of file", i, off)
		}
		if l1Size*8 > maxL1Bytes || l1Off%cs != 0 || (l1Size > 0 && !img.inFile(l1Off, l1Size*8)) {
			return nil, malformed("snapshot table", "entry %d: L1 table of %d entries at %#x is invalid", i, l1Size, l1Off)
		}
		if l1Size > 0 {
			regions = append(regions, region{int64(l1Off), int64(l1Off + roundUp(l1Size*8, cs)), fmt.Sprintf("snapshot %d L1 table", i)})
		}
		off += entryLen
	}
	regions = append(regions, region{int64(h.snapshotsOffset), int64(roundUp(off, cs)), "snapshot table"})
	return regions, nil
}

// overlapsMetadata returns the metadata region overlapping [start, end), if any.
func (img *Image) overlapsMetadata(start, end int64) (region, bool) {
	i, _ := slices.BinarySearchFunc(img.meta, start, func(r region, t int64) int {
		if r.end <= t {
			return -1
		}
		return 1
	})
	if i < len(img.meta) && img.meta[i].start < end {
		return img.meta[i], true
	}
	return region{}, false
}

func roundUp(v, to uint64) uint64 { return (v + to - 1) / to * to }

func bitList(mask uint64) string {
	var parts []string
	for mask != 0 {
		b := bits.TrailingZeros64(mask)
		parts = append(parts, fmt.Sprint(b))
		mask &^= 1 << b
	}
	return strings.Join(parts, ",")
}

func quoteOrUnknown(s string) string {
	if s == "" {
		return "(name not recorded)"
	}
	return fmt.Sprintf("%q", s)
}

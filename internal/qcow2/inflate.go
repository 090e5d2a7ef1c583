package qcow2

import (
	"encoding/binary"
	"errors"
	"math/bits"
)

// A one-shot raw-deflate (RFC 1951) decoder for compressed clusters. A
// cluster decompresses into a buffer of known size, so the output needs no
// sliding window: matches copy straight from the output, and input bits come
// from a slice, 8 bytes at a time. This is what qemu does with zlib's
// inflate(Z_FINISH) into the cluster; a streaming decoder (klauspost's flate,
// used before) copies every byte through its window and reads input one byte
// through an interface call at a time, and cost a third more CPU.
//
// Semantics match qemu's qcow2_zlib_decompress: success means dst was filled
// exactly; input after that point (padding, the next cluster) is ignored, and
// a stream ending before dst is full is an error.

var (
	errInflateShort   = errors.New("deflate stream ends before the cluster is full")
	errInflateInput   = errors.New("deflate stream truncated")
	errInflateBlock   = errors.New("invalid deflate block type")
	errInflateStored  = errors.New("stored block length does not match its complement")
	errInflateCodes   = errors.New("invalid Huffman code lengths")
	errInflateSymbol  = errors.New("invalid deflate symbol")
	errInflateDistant = errors.New("deflate distance reaches before the start of the cluster")
)

// Huffman table entries (uint32):
//
//	bits 0–3   bits to consume (for a link: the primary table's bits)
//	bits 4–7   extra bits after the code (length/distance), or a link's subtable bits
//	bits 8–11  kind flags
//	bits 16–31 literal byte, length or distance base, or a link's subtable offset
const (
	entLiteral = 1 << 8
	entEOB     = 1 << 9
	entLink    = 1 << 10
	entInvalid = 1 << 11

	litPrimaryBits  = 10
	distPrimaryBits = 8
	maxCodeBits     = 15
)

// huffTable is a primary lookup table indexed by the next primaryBits input
// bits, and subtables for longer codes. Sized for the worst case once, so
// decoding hostile input allocates nothing.
type huffTable struct {
	primary uint
	ents    []uint32
}

func newHuffTable(primary uint, maxSyms int) huffTable {
	// Each code longer than primary gets at most one subtable of at most
	// 1<<(15-primary) entries.
	return huffTable{primary: primary, ents: make([]uint32, 1<<primary+maxSyms<<(maxCodeBits-primary))}
}

var (
	lengthBase  = [29]uint16{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lengthExtra = [29]uint8{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distBase    = [30]uint16{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	distExtra   = [30]uint8{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
	// Order of the code length code lengths (RFC 1951 3.2.7).
	clOrder = [19]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}
)

// litEntry and distEntry give the table entry (without length) of a symbol.
func litEntry(sym int) uint32 {
	switch {
	case sym < 256:
		return entLiteral | uint32(sym)<<16
	case sym == 256:
		return entEOB
	case sym < 286:
		i := sym - 257
		return uint32(lengthExtra[i])<<4 | uint32(lengthBase[i])<<16
	}
	return entInvalid // 286, 287: in the fixed code but never valid
}

func distEntry(sym int) uint32 {
	if sym < 30 {
		return uint32(distExtra[sym])<<4 | uint32(distBase[sym])<<16
	}
	return entInvalid
}

// build fills t from the code lengths of symbols 0..len(lens)-1. As zlib
// does, it refuses over-subscribed codes and incomplete ones, except (when
// single is set: literal/length and distance codes) one code of one bit. No
// codes at all is accepted (the distance code of a block of literals only);
// every lookup then hits an invalid entry.
func (t *huffTable) build(lens []uint8, entry func(int) uint32, single bool) error {
	var count [maxCodeBits + 1]int
	maxLen := 0
	for _, l := range lens {
		count[l]++
		maxLen = max(maxLen, int(l))
	}
	count[0] = 0
	left := 1
	for l := 1; l <= maxCodeBits; l++ {
		left = left<<1 - count[l]
		if left < 0 {
			return errInflateCodes
		}
	}
	if left > 0 && maxLen > 0 && (maxLen > 1 || !single) {
		return errInflateCodes
	}
	var next [maxCodeBits + 2]int
	code := 0
	for l := 1; l <= maxCodeBits; l++ {
		code = (code + count[l-1]) << 1
		next[l] = code
	}
	p := t.primary
	primSize := 1 << p
	ents := t.ents
	for i := range primSize {
		ents[i] = entInvalid | uint32(p)
	}
	subBits := uint(0)
	if uint(maxLen) > p {
		subBits = uint(maxLen) - p
	}
	subSize := 1 << subBits
	nextSub := primSize
	for sym, l := range lens {
		if l == 0 {
			continue
		}
		c := next[l]
		next[l]++
		rev := int(bits.Reverse16(uint16(c)) >> (16 - l))
		e := entry(sym)
		if uint(l) <= p {
			for i := rev; i < primSize; i += 1 << l {
				ents[i] = e | uint32(l)
			}
			continue
		}
		// Long code: its low p bits (in input order) pick the link.
		prefix := rev & (primSize - 1)
		link := ents[prefix]
		if link&entLink == 0 {
			if nextSub+subSize > len(ents) {
				return errInflateCodes // cannot happen for valid lens; keeps indexing safe
			}
			link = entLink | uint32(p) | uint32(subBits)<<4 | uint32(nextSub)<<16
			ents[prefix] = link
			for i := nextSub; i < nextSub+subSize; i++ {
				ents[i] = entInvalid | uint32(subBits)
			}
			nextSub += subSize
		}
		base := int(link >> 16)
		r := uint(l) - p
		for i := rev >> p; i < subSize; i += 1 << r {
			ents[base+i] = e | uint32(r)
		}
	}
	return nil
}

// inflater holds the tables, reused from cluster to cluster.
type inflater struct {
	lit, dist, cl huffTable
	lens          [288 + 32]uint8
	fixedLit      huffTable
	fixedDist     huffTable
}

func newInflater() *inflater {
	f := &inflater{
		lit:       newHuffTable(litPrimaryBits, 288),
		dist:      newHuffTable(distPrimaryBits, 32),
		cl:        newHuffTable(7, 19),
		fixedLit:  newHuffTable(litPrimaryBits, 288),
		fixedDist: newHuffTable(distPrimaryBits, 32),
	}
	var lens [288]uint8
	for i := range lens {
		switch {
		case i < 144:
			lens[i] = 8
		case i < 256:
			lens[i] = 9
		case i < 280:
			lens[i] = 7
		default:
			lens[i] = 8
		}
	}
	if err := f.fixedLit.build(lens[:], litEntry, true); err != nil {
		panic(err) // constant input
	}
	for i := range 32 {
		lens[i] = 5
	}
	if err := f.fixedDist.build(lens[:32], distEntry, true); err != nil {
		panic(err)
	}
	return f
}

// bitReader reads deflate's LSB-first bit stream from a slice. Past the end
// it supplies zero bits and counts them; any of them being consumed is a
// truncated stream.
type bitReader struct {
	in   []byte
	pos  int
	bits uint64
	n    uint // valid bits in bits
	over int  // zero bytes supplied past the end of in
}

// refill makes n ≥ 56.
func (b *bitReader) refill() {
	if b.pos+8 <= len(b.in) {
		b.bits |= binary.LittleEndian.Uint64(b.in[b.pos:]) << b.n
		b.pos += int(63-b.n) >> 3
		b.n |= 56
		return
	}
	for b.n <= 56 {
		if b.pos < len(b.in) {
			b.bits |= uint64(b.in[b.pos]) << b.n
			b.pos++
		} else {
			b.over++
		}
		b.n += 8
	}
}

// overrun reports whether bits past the end of the input were consumed.
func (b *bitReader) overrun() bool { return b.over*8 > int(b.n) }

func (b *bitReader) take(k uint) uint64 {
	v := b.bits & (1<<k - 1)
	b.bits >>= k
	b.n -= k
	return v
}

// decode reads one symbol's entry with table t; the caller has refilled.
func (b *bitReader) decode(t *huffTable) uint32 {
	e := t.ents[b.bits&(1<<t.primary-1)]
	if e&entLink != 0 {
		b.bits >>= t.primary
		b.n -= t.primary
		e = t.ents[int(e>>16)+int(b.bits&(1<<(e>>4&15)-1))]
	}
	l := uint(e & 15)
	b.bits >>= l
	b.n -= l
	return e
}

// inflate decompresses the raw deflate stream src into dst, which it must
// fill exactly.
func (f *inflater) inflate(dst, src []byte) error {
	br := bitReader{in: src}
	o := 0
	for {
		br.refill()
		final := br.take(1)
		typ := br.take(2)
		if br.overrun() {
			return errInflateInput
		}
		var lit, dist *huffTable
		switch typ {
		case 0:
			// Stored: skip to a byte boundary, then LEN and NLEN.
			br.take(br.n & 7)
			br.refill()
			length := int(br.take(16))
			nlength := int(br.take(16))
			if br.overrun() {
				return errInflateInput
			}
			if nlength != ^length&0xffff {
				return errInflateStored
			}
			// Whole bytes still in the bit buffer come first.
			for length > 0 && br.n >= 8 {
				if o == len(dst) {
					return nil
				}
				dst[o] = byte(br.take(8))
				o++
				length--
			}
			if br.overrun() {
				return errInflateInput
			}
			if length > 0 {
				// The buffer is empty (n < 8 and byte aligned): the rest
				// comes straight from the input.
				br.bits, br.n = 0, 0
			}
			k := min(length, len(dst)-o)
			if br.pos+k > len(br.in) {
				return errInflateInput
			}
			copy(dst[o:], br.in[br.pos:br.pos+k])
			br.pos += k
			o += k
			if o == len(dst) {
				return nil
			}
			if final == 1 {
				return errInflateShort
			}
			continue
		case 1:
			lit, dist = &f.fixedLit, &f.fixedDist
		case 2:
			if err := f.readDynamic(&br); err != nil {
				return err
			}
			lit, dist = &f.lit, &f.dist
		default:
			return errInflateBlock
		}
		var err error
		var eob bool
		if o, eob, err = f.huffmanBlock(&br, dst, o, lit, dist); err != nil {
			return err
		}
		if !eob || o == len(dst) {
			return nil // dst is full: the rest of the stream does not matter
		}
		if final == 1 {
			return errInflateShort
		}
	}
}

// readDynamic reads a dynamic block's code lengths and builds f.lit and f.dist.
func (f *inflater) readDynamic(br *bitReader) error {
	br.refill()
	hlit := int(br.take(5)) + 257
	hdist := int(br.take(5)) + 1
	hclen := int(br.take(4)) + 4
	if hlit > 286 || hdist > 30 {
		return errInflateCodes
	}
	var clLens [19]uint8
	for i := range hclen {
		if i%8 == 0 {
			br.refill()
		}
		clLens[clOrder[i]] = uint8(br.take(3))
	}
	if err := f.cl.build(clLens[:], func(sym int) uint32 { return uint32(sym) << 16 }, false); err != nil {
		return err
	}
	lens := f.lens[:hlit+hdist]
	for i := 0; i < len(lens); {
		br.refill()
		e := br.decode(&f.cl)
		if e&entInvalid != 0 {
			return errInflateCodes
		}
		sym := int(e >> 16)
		var rep int
		var val uint8
		switch sym {
		case 16:
			if i == 0 {
				return errInflateCodes
			}
			val, rep = lens[i-1], 3+int(br.take(2))
		case 17:
			rep = 3 + int(br.take(3))
		case 18:
			rep = 11 + int(br.take(7))
		default:
			lens[i] = uint8(sym)
			i++
			continue
		}
		if i+rep > len(lens) {
			return errInflateCodes
		}
		for range rep {
			lens[i] = val
			i++
		}
	}
	if br.overrun() {
		return errInflateInput
	}
	if lens[256] == 0 {
		return errInflateCodes // no end-of-block code
	}
	if err := f.lit.build(lens[:hlit], litEntry, true); err != nil {
		return err
	}
	return f.dist.build(lens[hlit:], distEntry, true)
}

// huffmanBlock decodes one Huffman-coded block into dst from o. It returns
// the new output position and whether the block's end was reached (false:
// dst filled first). Once dst is full nothing more is decoded, as zlib
// stops when its output is full: what follows is not looked at.
func (f *inflater) huffmanBlock(br *bitReader, dst []byte, o int, lit, dist *huffTable) (int, bool, error) {
	for o < len(dst) {
		// One refill gives ≥ 56 bits, enough for a length code with its
		// extra bits (15+5) and a distance code with its extra bits (15+13).
		br.refill()
		e := br.decode(lit)
		if br.over != 0 && br.overrun() {
			return o, false, errInflateInput
		}
		if e&entLiteral != 0 {
			dst[o] = byte(e >> 16)
			o++
			continue
		}
		if e&(entEOB|entInvalid) != 0 {
			if e&entInvalid != 0 {
				return o, false, errInflateSymbol
			}
			return o, true, nil
		}
		length := int(e>>16) + int(br.take(uint(e>>4&15)))
		d := br.decode(dist)
		distance := int(d>>16) + int(br.take(uint(d>>4&15)))
		if br.over != 0 && br.overrun() {
			return o, false, errInflateInput
		}
		if d&entInvalid != 0 {
			return o, false, errInflateSymbol
		}
		if distance > o {
			return o, false, errInflateDistant
		}
		length = min(length, len(dst)-o)
		from := o - distance
		if distance >= length {
			copy(dst[o:o+length], dst[from:from+length])
			o += length
			continue
		}
		// Overlapping: the last `distance` bytes repeat. Each copy doubles
		// what there is to copy from.
		end := o + length
		for o < end {
			o += copy(dst[o:end], dst[from:o])
		}
	}
	return o, false, nil
}

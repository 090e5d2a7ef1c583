package qcow2

import (
	"bytes"
	stdflate "compress/flate"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"
)

// inflateSamples returns data of the kinds a disk holds: random bytes,
// text, runs of one byte, zeros, and binaries from /usr/bin when present.
func inflateSamples(t testing.TB) map[string][]byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 70000)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	var text bytes.Buffer
	for text.Len() < 70000 {
		text.WriteString("the quick brown fox jumps over the lazy dog; ")
		text.WriteByte(byte('a' + rng.IntN(26)))
	}
	runs := make([]byte, 70000)
	for i := range runs {
		runs[i] = byte(i / 5000)
	}
	mixed := make([]byte, 70000)
	copy(mixed, random[:20000])
	copy(mixed[30000:], text.Bytes()[:30000])
	samples := map[string][]byte{
		"random": random, "text": text.Bytes(), "runs": runs, "zeros": make([]byte, 70000), "mixed": mixed,
		"tiny": []byte("abc"),
	}
	if b, err := os.ReadFile("/usr/bin/env"); err == nil && len(b) > 1000 {
		samples["binary"] = b
	}
	return samples
}

func deflate(t testing.TB, level int, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := stdflate.NewWriter(&buf, level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestInflateMatchesStdlib(t *testing.T) {
	f := newInflater()
	levels := []int{stdflate.HuffmanOnly, stdflate.NoCompression, stdflate.BestSpeed, stdflate.DefaultCompression, stdflate.BestCompression}
	for name, data := range inflateSamples(t) {
		for _, level := range levels {
			comp := deflate(t, level, data)
			// Followed by padding, as a compressed cluster is in the file.
			padded := append(append([]byte(nil), comp...), make([]byte, 511)...)
			cases := []struct {
				name    string
				outLen  int
				in      []byte
				wantErr bool
			}{
				{"exact", len(data), comp, false},
				{"padded", len(data), padded, false},
				{"prefix", len(data) / 2, comp, false}, // dst full before the stream ends: fine
				{"longer", len(data) + 1, padded, true},
			}
			for _, tc := range cases {
				dst := make([]byte, tc.outLen)
				err := f.inflate(dst, tc.in)
				if tc.wantErr {
					if err == nil {
						t.Errorf("%s level %d %s: no error", name, level, tc.name)
					}
					continue
				}
				if err != nil {
					t.Errorf("%s level %d %s: %v", name, level, tc.name, err)
					continue
				}
				if !bytes.Equal(dst, data[:tc.outLen]) {
					t.Errorf("%s level %d %s: output differs", name, level, tc.name)
				}
			}
			// Cut short, a stream either fails or still held all of the
			// output (only its end-of-block code was cut off).
			for _, n := range []int{0, 1, len(comp) / 3, len(comp) * 2 / 3, len(comp) - 1} {
				dst := make([]byte, len(data))
				err := f.inflate(dst, comp[:n])
				if err == nil && !bytes.Equal(dst, data) {
					t.Errorf("%s level %d cut to %d of %d bytes: wrong output and no error", name, level, n, len(comp))
				}
				if err == nil && n <= len(comp)/3 && len(data) > 1000 {
					t.Errorf("%s level %d cut to %d of %d bytes: no error", name, level, n, len(comp))
				}
			}
		}
	}
}

func TestInflateRefuses(t *testing.T) {
	f := newInflater()
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, errInflateInput},
		{"reserved block type", []byte{0x07}, errInflateBlock},
		{"stored length complement", []byte{0x01, 0x05, 0x00, 0x00, 0x00}, errInflateStored},
		{"stored too short", []byte{0x01, 0x05, 0x00, 0xfa, 0xff, 'a'}, errInflateInput},
		{"final stored block too short for dst", []byte{0x01, 0x01, 0x00, 0xfe, 0xff, 'a'}, errInflateShort},
		// Fixed Huffman: a match of length 3 at distance 1 with no output yet.
		{"distance before start", []byte{0x03, 0x02, 0x00}, errInflateDistant},
		// Dynamic block whose code length code lengths are all zero.
		{"no code length codes", []byte{0x05, 0x00, 0x00, 0x00, 0x00}, errInflateCodes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := f.inflate(make([]byte, 16), tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzInflate checks the decoder against the standard library on arbitrary
// input: no panic, and where both fill the cluster they agree.
func FuzzInflate(f *testing.F) {
	for _, data := range inflateSamples(f) {
		for _, level := range []int{stdflate.HuffmanOnly, stdflate.NoCompression, stdflate.BestSpeed, stdflate.DefaultCompression} {
			comp := deflate(f, level, data[:min(len(data), 4096)])
			f.Add(comp, uint16(min(len(data), 4096)))
		}
	}
	inf := newInflater()
	f.Fuzz(func(t *testing.T, in []byte, size uint16) {
		ours := make([]byte, int(size)+1)
		errOurs := inf.inflate(ours, in)
		ref := make([]byte, len(ours))
		_, errRef := io.ReadFull(stdflate.NewReader(bytes.NewReader(in)), ref)
		if errOurs == nil && errRef == nil && !bytes.Equal(ours, ref) {
			t.Fatalf("output differs from compress/flate")
		}
		if (errOurs == nil) != (errRef == nil) {
			t.Logf("ours: %v, compress/flate: %v", errOurs, errRef)
		}
	})
}

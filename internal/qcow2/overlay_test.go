package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestBackingHostile(t *testing.T) {
	var ov bytes.Buffer
	if _, err := WriteOverlay(&ov, OverlaySpec{Backing: "/cache/blobs/sha256/ab", BackingFormat: FormatRaw, VirtualSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	good := ov.Bytes()
	name, f, ok, err := Backing(bytes.NewReader(good))
	if err != nil || !ok || name != "/cache/blobs/sha256/ab" || f != FormatRaw {
		t.Fatalf("Backing = %q %q %v %v", name, f, ok, err)
	}
	mut := func(fn func(b []byte)) []byte {
		b := bytes.Clone(good[:4096])
		fn(b)
		return b
	}
	be := binary.BigEndian
	for _, tc := range []struct {
		name      string
		data      []byte
		ok        bool
		malformed bool
	}{
		{"empty", nil, false, false},
		{"raw", make([]byte, 4096), false, false},
		{"truncated header", good[:50], false, false},
		{"no backing", mut(func(b []byte) { be.PutUint64(b[8:], 0) }), false, false},
		{"name past the header", mut(func(b []byte) { be.PutUint64(b[8:], 4090) }), false, true},
		{"huge name", mut(func(b []byte) { be.PutUint32(b[16:], 1<<31) }), false, true},
		{"offset overflow", mut(func(b []byte) { be.PutUint64(b[8:], ^uint64(0)-2) }), false, true},
		{"extension length past the end", mut(func(b []byte) { be.PutUint32(b[v3HeaderLen+4:], 1<<30) }), true, false},
		{"header_length huge", mut(func(b []byte) { be.PutUint32(b[100:], 1<<31) }), true, false},
		{"file shorter than the name", good[:v3HeaderLen+20], false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, ok, err := Backing(bytes.NewReader(tc.data))
			if ok != tc.ok || (err != nil) != tc.malformed || (err != nil && !errors.Is(err, ErrMalformed)) {
				t.Fatalf("ok %v err %v; want ok %v malformed %v", ok, err, tc.ok, tc.malformed)
			}
		})
	}
}

func TestWriteOverlayRefuses(t *testing.T) {
	for _, tc := range []struct {
		spec OverlaySpec
		want string
	}{
		{OverlaySpec{BackingFormat: FormatRaw, VirtualSize: 1}, "no backing file"},
		{OverlaySpec{Backing: "/b", BackingFormat: FormatVMDK, VirtualSize: 1}, "vmdk"},
		{OverlaySpec{Backing: "/b", BackingFormat: FormatRaw}, "virtual size 0"},
		{OverlaySpec{Backing: "/b", BackingFormat: FormatRaw, VirtualSize: overlayMaxSize + 1}, "virtual size"},
		{OverlaySpec{Backing: "/" + strings.Repeat("x", 2000), BackingFormat: FormatRaw, VirtualSize: 1}, "backing file name"},
	} {
		if _, err := WriteOverlay(&bytes.Buffer{}, tc.spec); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.spec, err, tc.want)
		}
	}
}

// FuzzBacking: no header makes Backing panic, and a name it returns lies
// within what was read.
func FuzzBacking(f *testing.F) {
	var ov bytes.Buffer
	if _, err := WriteOverlay(&ov, OverlaySpec{Backing: "/base", BackingFormat: FormatQcow2, VirtualSize: 1 << 30}); err != nil {
		f.Fatal(err)
	}
	f.Add(ov.Bytes()[:4096])
	f.Add([]byte(qcowMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		name, _, ok, err := Backing(bytes.NewReader(b))
		if (ok || name != "") && (err != nil || len(name) > maxBackingNameLen) {
			t.Fatalf("ok %v name %d bytes err %v", ok, len(name), err)
		}
	})
}

package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func TestDetectFormat(t *testing.T) {
	vdi := make([]byte, 512)
	binary.LittleEndian.PutUint32(vdi[0x40:], 0xbeda107f)
	dmg := make([]byte, 1024)
	copy(dmg[512:], "koly")
	tests := []struct {
		name string
		head []byte
		want Format
	}{
		{"empty", nil, FormatRaw},
		{"short", []byte("QF"), FormatRaw},
		{"qcow2 v3", []byte("QFI\xfb\x00\x00\x00\x03"), FormatQcow2},
		{"qcow v1", []byte("QFI\xfb\x00\x00\x00\x01"), FormatQcow},
		{"vmdk sparse", []byte("KDMV\x01"), FormatVMDK},
		{"vmdk descriptor", []byte("# Disk DescriptorFile\nversion=1"), FormatVMDK},
		{"vhdx", []byte("vhdxfile"), FormatVHDX},
		{"vdi", vdi, FormatVDI},
		{"vpc", []byte("conectix"), FormatVPC},
		{"qed", []byte("QED\x00"), FormatQED},
		{"luks", []byte("LUKS\xba\xbe\x00\x01"), FormatLUKS},
		{"parallels", []byte("WithoutFreeSpace"), FormatParallels},
		{"dmg trailer", dmg, FormatDMG},
		{"zeros", make([]byte, 4096), FormatRaw},
		{"mbr", append(make([]byte, 510), 0x55, 0xaa), FormatRaw},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DetectFormat(bytes.NewReader(tt.head), int64(len(tt.head)))
			if err != nil || got != tt.want {
				t.Fatalf("DetectFormat = %q, %v; want %q", got, err, tt.want)
			}
			if tt.want == FormatQcow2 || tt.want == FormatRaw {
				return
			}
			_, err = Open(bytes.NewReader(tt.head), int64(len(tt.head)))
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Format != tt.want || !errors.Is(err, ErrNotQcow2) {
				t.Fatalf("Open error %v, want FormatError{%s}", err, tt.want)
			}
		})
	}
	// A size larger than the data is a read error, not a format.
	if _, err := DetectFormat(bytes.NewReader([]byte("abc")), 100); err == nil {
		t.Error("short read not reported")
	}
}

package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// Format names a disk image format as qemu-img spells it.
type Format string

// Formats recognised by DetectFormat. Anything without a known magic is raw.
const (
	FormatRaw       Format = "raw"
	FormatQcow2     Format = "qcow2"
	FormatQcow      Format = "qcow" // qcow version 1
	FormatVMDK      Format = "vmdk"
	FormatVHDX      Format = "vhdx"
	FormatVDI       Format = "vdi"
	FormatVPC       Format = "vpc"
	FormatQED       Format = "qed"
	FormatLUKS      Format = "luks"
	FormatParallels Format = "parallels"
	FormatBochs     Format = "bochs"
	FormatCloop     Format = "cloop"
	FormatDMG       Format = "dmg"
)

const qcowMagic = "QFI\xfb"

// DetectFormat identifies the image format from its magic numbers, the way
// qemu's format probing does. A file matching no known magic is FormatRaw.
func DetectFormat(r io.ReaderAt, size int64) (Format, error) {
	if size < 0 {
		return "", fmt.Errorf("detect image format: negative size %d", size)
	}
	var head [512]byte
	n := int64(len(head))
	if size < n {
		n = size
	}
	if m, err := r.ReadAt(head[:n], 0); int64(m) < n {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return "", fmt.Errorf("detect image format: read first %d bytes: %w", n, err)
	}
	b := head[:n]
	switch {
	case bytes.HasPrefix(b, []byte(qcowMagic)):
		if len(b) >= 8 && binary.BigEndian.Uint32(b[4:8]) == 1 {
			return FormatQcow, nil
		}
		return FormatQcow2, nil
	case bytes.HasPrefix(b, []byte("KDMV")), bytes.HasPrefix(b, []byte("COWD")),
		bytes.HasPrefix(b, []byte("# Disk DescriptorFile")):
		return FormatVMDK, nil
	case bytes.HasPrefix(b, []byte("vhdxfile")):
		return FormatVHDX, nil
	case len(b) >= 0x44 && binary.LittleEndian.Uint32(b[0x40:0x44]) == 0xbeda107f:
		return FormatVDI, nil
	case bytes.HasPrefix(b, []byte("conectix")):
		return FormatVPC, nil
	case bytes.HasPrefix(b, []byte("QED\x00")):
		return FormatQED, nil
	case bytes.HasPrefix(b, []byte("LUKS\xba\xbe")):
		return FormatLUKS, nil
	case bytes.HasPrefix(b, []byte("WithoutFreeSpace")), bytes.HasPrefix(b, []byte("WithouFreSpacExt")):
		return FormatParallels, nil
	case bytes.HasPrefix(b, []byte("Bochs Virtual HD Image")):
		return FormatBochs, nil
	case bytes.HasPrefix(b, []byte("#!/bin/sh\n#V2.0 Format\nmodprobe cloop")):
		return FormatCloop, nil
	}
	// DMG keeps its "koly" trailer in the last 512 bytes.
	if size >= 512 {
		var tail [4]byte
		if _, err := r.ReadAt(tail[:], size-512); err == nil && string(tail[:]) == "koly" {
			return FormatDMG, nil
		}
	}
	return FormatRaw, nil
}

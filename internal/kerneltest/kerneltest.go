// Package kerneltest builds kernel files the way distributions ship them, for
// tests of unpacking: an Image-like arm64 kernel and EFI zboot applications
// around a compressed payload.
package kerneltest

import (
	"encoding/binary"
	"math/rand/v2"
)

// Arm64Image returns an Image-like kernel of size bytes (at least 64): the
// arm64 boot header (an EFI stub's "MZ", the image size, the "ARM\x64"
// magic at 0x38) followed by random and zero regions, so that it compresses
// like a kernel without being trivial. The same size gives the same bytes.
func Arm64Image(size int) []byte {
	b := make([]byte, max(size, 64))
	copy(b, "MZ\x00\x91")                                 // code0: "MZ" doubles as an instruction
	binary.LittleEndian.PutUint64(b[16:], uint64(len(b))) // image_size
	copy(b[0x38:], "ARM\x64")
	rng := rand.New(rand.NewPCG(uint64(size), 11))
	for i := 64; i < len(b)/3; i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// ZBoot wraps a compressed payload the way Linux's
// drivers/firmware/efi/libstub does for CONFIG_EFI_ZBOOT: the zboot header
// ("MZ", "zimg", payload offset and size, the compression name, then
// LINUX_PE_MAGIC and the PE header offset), a PE signature, decompressor
// code, the payload at a page boundary and — for every method but gzip —
// the uncompressed size appended after the payload, outside the header's
// payload size.
func ZBoot(compression string, payload []byte, imageSize int) []byte {
	const payloadOff = 0x1000
	b := make([]byte, payloadOff, payloadOff+len(payload)+512)
	copy(b, "MZ\x00\x00zimg")
	binary.LittleEndian.PutUint32(b[8:], payloadOff)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(payload)))
	copy(b[24:0x38], compression+"\x00")
	binary.LittleEndian.PutUint32(b[0x38:], 0x818223cd) // LINUX_PE_MAGIC
	binary.LittleEndian.PutUint32(b[0x3c:], 0x40)       // PE header offset
	copy(b[0x40:], "PE\x00\x00\x64\xaa")                // signature, arm64 machine type
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0x200; i < payloadOff; i++ {
		b[i] = byte(rng.Uint32()) // the decompressor stub
	}
	b = append(b, payload...)
	if compression != "gzip" {
		b = binary.LittleEndian.AppendUint32(b, uint32(imageSize))
	}
	return append(b, make([]byte, 512-len(b)%512)...) // section alignment padding
}

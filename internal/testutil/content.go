package testutil

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"os"
	"testing"

	"github.com/vmprep/vmprep/pkg/digest"
)

// SHA256Of is b's SHA-256 digest.
func SHA256Of(b []byte) digest.Digest {
	h := sha256.Sum256(b)
	return digest.Digest{Algorithm: digest.SHA256, Hex: hex.EncodeToString(h[:])}
}

// SHA512Of is b's SHA-512 digest.
func SHA512Of(b []byte) digest.Digest {
	h := sha512.Sum512(b)
	return digest.Digest{Algorithm: digest.SHA512, Hex: hex.EncodeToString(h[:])}
}

// Fill returns n deterministic pseudo-random bytes, distinct per seed.
func Fill(seed string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	block := sha256.Sum256([]byte(seed))
	for len(out) < n {
		out = append(out, block[:]...)
		block = sha256.Sum256(block[:])
	}
	return out[:n]
}

// DirNames lists a directory's entries (nil if it does not exist).
func DirNames(tb testing.TB, dir string) []string {
	tb.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		tb.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// Exists reports whether anything (a dangling symlink too) is at p.
func Exists(p string) bool { _, err := os.Lstat(p); return err == nil }

package manifest_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/vmprep/vmprep/internal/manifest"
	"github.com/vmprep/vmprep/internal/signtest"
)

// TestClearsignedChecksum runs the path a Fedora CHECKSUM takes: verify the
// clearsigned file, parse only its signed text. A digest forged outside the
// armor must not reach the manifest.
func TestClearsignedChecksum(t *testing.T) {
	const name = "Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2"
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	key := signtest.NewKey(t, "fedora")
	text := "# " + name + ": 494600192 bytes\nSHA256 (" + name + ") = " + sum("genuine") + "\n"
	forged := sum("evil") + "  " + name + "\n" + sum("evil") + "  extra.qcow2\n"
	file := append([]byte(forged), key.Clearsign([]byte(text))...)
	file = append(file, forged...)

	plain, signer, err := key.Keyring().VerifyClearsigned(file)
	if err != nil {
		t.Fatal(err)
	}
	if signer.Fingerprint != key.Fingerprint() {
		t.Fatalf("signer %s, want %s", signer.Fingerprint, key.Fingerprint())
	}
	m, err := manifest.Parse(bytes.NewReader(plain))
	if err != nil {
		t.Fatal(err)
	}
	d, err := m.Lookup(name)
	if err != nil || d.Hex != sum("genuine") {
		t.Fatalf("Lookup(%q) = %v, %v; want the signed digest %s", name, d, err, sum("genuine"))
	}
	if _, err := m.Lookup("extra.qcow2"); !errors.Is(err, manifest.ErrEntryNotFound) {
		t.Fatalf("entry from outside the armor: %v", err)
	}
	// Parsing the whole file instead of the verified text must fail loudly.
	if _, err := manifest.Parse(bytes.NewReader(file)); err == nil {
		t.Fatal("Parse accepted a clearsigned file with forged lines around it")
	}
}

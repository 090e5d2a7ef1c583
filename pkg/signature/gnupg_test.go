package signature_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmprep/vmprep/pkg/signature"
)

// TestGnuPGFixtures verifies files made by GnuPG itself (see
// testdata/gnupg/README.md), not by the library under test: an RSA key
// whose self-signatures are SHA-1 like Ubuntu's cloud-image key, armored
// and binary detached signatures, a file signed by two keys of which only
// the second is trusted, and a clearsigned CHECKSUM with dash-escaping.
func TestGnuPGFixtures(t *testing.T) {
	const (
		signerFP = "941C280FCD93E2AEDEF66F4E8117AB8D9EF78ACF"
		otherFP  = "2F199C437F2A6B898142E635DFA439CC3C90FB71"
	)
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join("testdata", "gnupg", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	signer, err := signature.LoadKeyringFile(filepath.Join("testdata", "gnupg", "signer.asc"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := signature.ReadKeyring(bytes.NewReader(read("other.asc")))
	if err != nil {
		t.Fatal(err)
	}
	sums := read("SHA256SUMS")
	tampered := bytes.Clone(sums)
	tampered[0] ^= 1 // a hex digit becomes another character

	detached := []struct {
		name    string
		keyring *signature.Keyring
		sig     string
		data    []byte
		wantErr error
	}{
		{"armored SHA-512", signer, "SHA256SUMS.gpg", sums, nil},
		{"binary", signer, "SHA256SUMS.sig", sums, nil},
		{"two signers, trusted one second", signer, "SHA256SUMS.two-signers.gpg", sums, nil},
		{"tampered data", signer, "SHA256SUMS.gpg", tampered, signature.ErrBadSignature},
		{"SHA-1 message signature", signer, "SHA256SUMS.sha1.gpg", sums, signature.ErrBadSignature},
		{"signed by a key we do not hold", other, "SHA256SUMS.gpg", sums, signature.ErrUnknownSigner},
	}
	for _, tt := range detached {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tt.keyring.VerifyDetached(bytes.NewReader(tt.data), read(tt.sig))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("VerifyDetached = %+v, %v; want %v", s, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Fingerprint != signerFP || s.Identity != "vmprep fixture (SHA-1 certified, like Ubuntu 2009 key) <fixture@example.invalid>" {
				t.Fatalf("signer %+v, want %s", s, signerFP)
			}
		})
	}

	t.Run("clearsigned", func(t *testing.T) {
		text, s, err := signer.VerifyClearsigned(read("CHECKSUM.asc"))
		if err != nil {
			t.Fatal(err)
		}
		// GnuPG drops the final newline of the signed text.
		if want := bytes.TrimSuffix(read("CHECKSUM"), []byte("\n")); !bytes.Equal(text, want) || s.Fingerprint != signerFP {
			t.Fatalf("plaintext %q by %s; want %q by %s", text, s.Fingerprint, want, signerFP)
		}
	})
	if fps := other.Fingerprints(); len(fps) != 1 || fps[0] != otherFP {
		t.Fatalf("other.asc fingerprints %v", fps)
	}
}

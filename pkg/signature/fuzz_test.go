package signature_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/vmprep/vmprep/internal/signtest"
	"github.com/vmprep/vmprep/pkg/signature"
)

// FuzzVerify feeds hostile keyrings, signatures and clearsigned messages
// through the library: nothing may panic, and no mangled input may verify
// as signed by anyone but the fixture key.
func FuzzVerify(f *testing.F) {
	key := signtest.NewKey(f, "fuzz")
	data := []byte("SHA256 (a.img) = 00\n")
	f.Add(key.DetachedArmored(data), key.Clearsign(data), key.ArmoredPublic())
	f.Add(key.DetachedBinary(data), []byte("-----BEGIN PGP SIGNED MESSAGE-----\n\nx\n-----BEGIN PGP SIGNATURE-----\n\n-----END PGP SIGNATURE-----\n"), []byte{0x99, 0x00})
	f.Add([]byte{}, []byte{}, []byte{})
	kr := key.Keyring()
	f.Fuzz(func(t *testing.T, sig, clear, keyring []byte) {
		if s, err := kr.VerifyDetached(bytes.NewReader(data), sig); err == nil && s.Fingerprint != key.Fingerprint() {
			t.Fatalf("verified as %+v", s)
		}
		if plain, s, err := kr.VerifyClearsigned(clear); err == nil && (s.Fingerprint != key.Fingerprint() || plain == nil) {
			t.Fatalf("clearsigned verified as %+v, %q", s, plain)
		}
		other, err := signature.ReadKeyring(bytes.NewReader(keyring))
		if err != nil {
			return
		}
		if _, err := other.VerifyDetached(bytes.NewReader(data), sig); err != nil && !isSentinel(err) {
			t.Fatalf("error without a sentinel: %v", err)
		}
	})
}

func isSentinel(err error) bool {
	for _, s := range []error{signature.ErrUnknownSigner, signature.ErrBadSignature, signature.ErrNoSignature,
		signature.ErrExpiredKey, signature.ErrRevokedKey, signature.ErrTooLarge} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

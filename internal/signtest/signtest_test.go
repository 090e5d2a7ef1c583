package signtest_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/vmprep/vmprep/internal/signtest"
	"github.com/vmprep/vmprep/pkg/signature"
)

// TestRoundTrip checks that every fixture kind verifies against the key's
// own keyring and names the key as signer.
func TestRoundTrip(t *testing.T) {
	key := signtest.NewKey(t, "mirror")
	data := []byte("0123  a file\n")
	kr := key.Keyring()
	if got := kr.Fingerprints(); len(got) != 1 || got[0] != key.Fingerprint() {
		t.Fatalf("Fingerprints() = %v, want [%s]", got, key.Fingerprint())
	}
	for _, tt := range []struct {
		name string
		sig  []byte
	}{
		{"armored", key.DetachedArmored(data)},
		{"binary", key.DetachedBinary(data)},
	} {
		s, err := kr.VerifyDetached(bytes.NewReader(data), tt.sig)
		if err != nil || s.Fingerprint != key.Fingerprint() {
			t.Errorf("%s: VerifyDetached = %+v, %v; want signer %s", tt.name, s, err, key.Fingerprint())
		}
	}
	text, s, err := kr.VerifyClearsigned(key.Clearsign(data))
	if err != nil || !bytes.Equal(text, data) || s.Identity != key.Identity() || key.Identity() != "mirror <mirror@vmprep.test>" {
		t.Errorf("VerifyClearsigned = %q, %+v, %v", text, s, err)
	}
	if _, err := signature.ReadKeyring(bytes.NewReader(key.ArmoredPublic())); err != nil {
		t.Errorf("ReadKeyring(ArmoredPublic) = %v", err)
	}
}

func TestExpired(t *testing.T) {
	key := signtest.NewKey(t, "old", signtest.Expired())
	data := []byte("x")
	_, err := key.Keyring().VerifyDetached(bytes.NewReader(data), key.DetachedArmored(data))
	if !errors.Is(err, signature.ErrExpiredKey) {
		t.Fatalf("VerifyDetached with expired key = %v, want ErrExpiredKey", err)
	}
}

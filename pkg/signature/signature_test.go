package signature_test

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/vmprep/vmprep/internal/signtest"
	"github.com/vmprep/vmprep/pkg/signature"
)

// TestUbuntuFingerprintsPinned fails whenever the embedded trust anchor
// changes, so that change is always a deliberate, reviewed decision.
func TestUbuntuFingerprintsPinned(t *testing.T) {
	want := []string{
		"4A3CE3CD565D7EB5C810E2B97FF3F408476CF100", // Ubuntu Cloud Image Builder: simplestreams .sjson
		"D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81", // UEC Image Automatic Signing Key: SHA256SUMS.gpg
	}
	got := signature.UbuntuCloudImages().Fingerprints()
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("embedded Ubuntu fingerprints = %v, want %v", got, want)
	}
}

// TestUbuntuKeyringIsFresh checks each call parses its own copy: rejecting
// a signature with one keyring must not depend on another caller.
func TestUbuntuKeyringIsFresh(t *testing.T) {
	a, b := signature.UbuntuCloudImages(), signature.UbuntuCloudImages()
	if a == b {
		t.Fatal("UbuntuCloudImages returned the same pointer twice")
	}
	// A fixture key is unknown to the Ubuntu keyring.
	key := signtest.NewKey(t, "stranger")
	data := []byte("x")
	if _, err := a.VerifyDetached(bytes.NewReader(data), key.DetachedArmored(data)); !errors.Is(err, signature.ErrUnknownSigner) {
		t.Fatalf("Ubuntu keyring verifying a stranger's signature: %v, want ErrUnknownSigner", err)
	}
}

func serializeBinary(t *testing.T, e *openpgp.Entity) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := e.Serialize(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func newEntity(t *testing.T, name string) *openpgp.Entity {
	t.Helper()
	e, err := openpgp.NewEntity(name, "", name+"@vmprep.test", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func armoredSignatureBlock(t *testing.T, body []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, "PGP SIGNATURE", nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(body)
	w.Close()
	return buf.Bytes()
}

func TestReadKeyring(t *testing.T) {
	k1 := signtest.NewKey(t, "one")
	k2 := signtest.NewKey(t, "two")
	e := newEntity(t, "binary")
	binaryFP := strings.ToUpper(fmt.Sprintf("%x", e.PrimaryKey.Fingerprint))
	tests := []struct {
		name    string
		in      []byte
		want    []string // fingerprints
		wantErr error
	}{
		{name: "armored", in: k1.ArmoredPublic(), want: []string{k1.Fingerprint()}},
		{name: "armored after a preamble", in: append([]byte("Key for mirror signing:\n\n"), k1.ArmoredPublic()...), want: []string{k1.Fingerprint()}},
		{name: "two concatenated armored blocks", in: append(k1.ArmoredPublic(), k2.ArmoredPublic()...), want: []string{k1.Fingerprint(), k2.Fingerprint()}},
		{name: "binary", in: serializeBinary(t, e), want: []string{binaryFP}},
		{name: "empty", in: nil, wantErr: signature.ErrNotOpenPGP},
		{name: "plain text", in: []byte("this is not a key\n"), wantErr: signature.ErrNotOpenPGP},
		{name: "armored signature, not a key", in: k1.DetachedArmored([]byte("x")), wantErr: signature.ErrNoKeys},
		{name: "armor without END", in: []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBF\n"), wantErr: signature.ErrNotOpenPGP},
		{name: "binary garbage", in: []byte{0x99, 0x01, 0x0d, 0x04, 0xff, 0xff}, wantErr: signature.ErrNoKeys},
		{name: "binary signature, not a key", in: k1.DetachedBinary([]byte("x")), wantErr: signature.ErrNoKeys},
		{name: "too large", in: bytes.Repeat([]byte{0x99}, signature.MaxKeyringSize+1), wantErr: signature.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kr, err := signature.ReadKeyring(bytes.NewReader(tt.in))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ReadKeyring error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := kr.Fingerprints(); !slices.Equal(got, tt.want) {
				t.Fatalf("Fingerprints() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLoadKeyringFile(t *testing.T) {
	key := signtest.NewKey(t, "file")
	dir := t.TempDir()
	path := filepath.Join(dir, "mirror.asc")
	if err := os.WriteFile(path, key.ArmoredPublic(), 0o644); err != nil {
		t.Fatal(err)
	}
	kr, err := signature.LoadKeyringFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := kr.Fingerprints(); !slices.Equal(got, []string{key.Fingerprint()}) {
		t.Errorf("Fingerprints() = %v", got)
	}
	if _, err := signature.LoadKeyringFile(filepath.Join(dir, "missing.asc")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want os.ErrNotExist", err)
	}
	bad := filepath.Join(dir, "bad.asc")
	if err := os.WriteFile(bad, []byte("nope"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := signature.LoadKeyringFile(bad); !errors.Is(err, signature.ErrNotOpenPGP) || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad file: %v, want ErrNotOpenPGP naming %s", err, bad)
	}
}

func TestVerifyDetached(t *testing.T) {
	signer := signtest.NewKey(t, "signer")
	other := signtest.NewKey(t, "other")
	expired := signtest.NewKey(t, "expired", signtest.Expired())
	revokedKeyring, revokedSig := revokedFixture(t)
	data := []byte(fmt.Sprintf("%x *ubuntu-24.04-server-cloudimg-amd64.img\n", sha256.Sum256([]byte("img"))))
	tampered := bytes.Replace(data, []byte("amd64"), []byte("arm64"), 1)
	sha1Keyring, sha1Sig := sha1Fixture(t, data)
	both, err := signature.ReadKeyring(bytes.NewReader(append(other.ArmoredPublic(), signer.ArmoredPublic()...)))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		keyring *signature.Keyring
		data    []byte
		sig     []byte
		wantErr error
	}{
		{name: "good armored", keyring: signer.Keyring(), data: data, sig: signer.DetachedArmored(data)},
		{name: "good binary", keyring: signer.Keyring(), data: data, sig: signer.DetachedBinary(data)},
		{name: "good, signer second in keyring", keyring: both, data: data, sig: signer.DetachedArmored(data)},
		{name: "good armored with CRLF", keyring: signer.Keyring(), data: data, sig: bytes.ReplaceAll(signer.DetachedArmored(data), []byte("\n"), []byte("\r\n"))},
		{name: "tampered data", keyring: signer.Keyring(), data: tampered, sig: signer.DetachedArmored(data), wantErr: signature.ErrBadSignature},
		{name: "tampered data, binary", keyring: signer.Keyring(), data: tampered, sig: signer.DetachedBinary(data), wantErr: signature.ErrBadSignature},
		{name: "wrong key", keyring: other.Keyring(), data: data, sig: signer.DetachedArmored(data), wantErr: signature.ErrUnknownSigner},
		{name: "Ubuntu keyring, fixture signer", keyring: signature.UbuntuCloudImages(), data: data, sig: signer.DetachedBinary(data), wantErr: signature.ErrUnknownSigner},
		{name: "garbage text", keyring: signer.Keyring(), data: data, sig: []byte("this is no signature"), wantErr: signature.ErrBadSignature},
		{name: "garbage binary", keyring: signer.Keyring(), data: data, sig: []byte{0xc2, 0x05, 0x04, 0x00, 0x01, 0x02, 0x03}, wantErr: signature.ErrBadSignature},
		{name: "truncated binary", keyring: signer.Keyring(), data: data, sig: signer.DetachedBinary(data)[:20], wantErr: signature.ErrBadSignature},
		{name: "public key instead of signature", keyring: signer.Keyring(), data: data, sig: signer.ArmoredPublic(), wantErr: signature.ErrBadSignature},
		{name: "missing", keyring: signer.Keyring(), data: data, sig: nil, wantErr: signature.ErrNoSignature},
		{name: "blank", keyring: signer.Keyring(), data: data, sig: []byte("\n\n"), wantErr: signature.ErrNoSignature},
		{name: "empty armored block", keyring: signer.Keyring(), data: data, sig: armoredSignatureBlock(t, nil), wantErr: signature.ErrNoSignature},
		{name: "too large", keyring: signer.Keyring(), data: data, sig: append(signer.DetachedBinary(data), make([]byte, signature.MaxSignatureSize)...), wantErr: signature.ErrTooLarge},
		{name: "expired key", keyring: expired.Keyring(), data: data, sig: expired.DetachedArmored(data), wantErr: signature.ErrExpiredKey},
		{name: "SHA-1 signature", keyring: sha1Keyring, data: data, sig: sha1Sig, wantErr: signature.ErrBadSignature},
		{name: "revoked key", keyring: revokedKeyring, data: []byte("revoked"), sig: revokedSig, wantErr: signature.ErrRevokedKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tt.keyring.VerifyDetached(bytes.NewReader(tt.data), tt.sig)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("VerifyDetached = %+v, %v; want %v", s, err, tt.wantErr)
				}
				if s != (signature.Signer{}) {
					t.Errorf("failed verification still returned signer %+v", s)
				}
				// An operator needs to see which key signed.
				if tt.wantErr == signature.ErrUnknownSigner && !strings.Contains(err.Error(), signer.Fingerprint()) {
					t.Errorf("error %q does not name the signing key %s", err, signer.Fingerprint())
				}
				return
			}
			if err != nil {
				t.Fatalf("VerifyDetached: %v", err)
			}
			want := signature.Signer{Fingerprint: signer.Fingerprint(), Identity: "signer <signer@vmprep.test>"}
			if s != want {
				t.Errorf("signer = %+v, want %+v", s, want)
			}
		})
	}
}

// TestVerifyDetachedReadError keeps I/O failures apart from bad signatures:
// the first may be retried, the second must not.
func TestVerifyDetachedReadError(t *testing.T) {
	key := signtest.NewKey(t, "io")
	data := []byte("data")
	ioErr := errors.New("connection reset")
	_, err := key.Keyring().VerifyDetached(io.MultiReader(bytes.NewReader(data), iotest.ErrReader(ioErr)), key.DetachedBinary(data))
	if !errors.Is(err, ioErr) {
		t.Fatalf("VerifyDetached = %v, want the read error", err)
	}
	for _, sentinel := range []error{signature.ErrBadSignature, signature.ErrUnknownSigner, signature.ErrNoSignature} {
		if errors.Is(err, sentinel) {
			t.Errorf("read error reported as %v: %v", sentinel, err)
		}
	}
}

func TestNilKeyring(t *testing.T) {
	key := signtest.NewKey(t, "k")
	var kr *signature.Keyring
	if got := kr.Fingerprints(); len(got) != 0 {
		t.Errorf("nil keyring Fingerprints() = %v", got)
	}
	if _, err := kr.VerifyDetached(bytes.NewReader([]byte("x")), key.DetachedBinary([]byte("x"))); !errors.Is(err, signature.ErrUnknownSigner) {
		t.Errorf("nil keyring VerifyDetached = %v, want ErrUnknownSigner", err)
	}
	if _, _, err := kr.VerifyClearsigned(key.Clearsign([]byte("x"))); !errors.Is(err, signature.ErrUnknownSigner) {
		t.Errorf("nil keyring VerifyClearsigned = %v, want ErrUnknownSigner", err)
	}
}

// sha1Fixture signs data with SHA-1, which verification must refuse.
func sha1Fixture(t *testing.T, data []byte) (*signature.Keyring, []byte) {
	t.Helper()
	e := newEntity(t, "sha1")
	// The library refuses to write SHA-1 signatures, so build the packet by hand.
	sigKey := e.PrivateKey
	s := &packet.Signature{
		Version:      sigKey.PublicKey.Version,
		SigType:      packet.SigTypeBinary,
		PubKeyAlgo:   sigKey.PublicKey.PubKeyAlgo,
		Hash:         crypto.SHA1,
		CreationTime: time.Now(),
		IssuerKeyId:  &sigKey.PublicKey.KeyId,
	}
	noSaltNotation := false // the salt notation has no SHA-1 size
	cfg := &packet.Config{NonDeterministicSignaturesViaNotation: &noSaltNotation}
	h, err := s.PrepareSign(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.Write(data)
	if err := s.Sign(h, sigKey, cfg); err != nil {
		t.Fatal(err)
	}
	var sig bytes.Buffer
	if err := s.Serialize(&sig); err != nil {
		t.Fatal(err)
	}
	p, err := packet.Read(bytes.NewReader(sig.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := p.(*packet.Signature); !ok || s.Hash != crypto.SHA1 {
		t.Fatalf("fixture signature is %T %+v, want a SHA-1 signature", p, p)
	}
	kr, err := signature.ReadKeyring(bytes.NewReader(serializeBinary(t, e)))
	if err != nil {
		t.Fatal(err)
	}
	return kr, sig.Bytes()
}

// revokedFixture signs "revoked" with a key, then revokes the key and
// returns a keyring holding the revoked public key.
func revokedFixture(t *testing.T) (*signature.Keyring, []byte) {
	t.Helper()
	e := newEntity(t, "revoked")
	var sig bytes.Buffer
	if err := openpgp.DetachSign(&sig, e, bytes.NewReader([]byte("revoked")), nil); err != nil {
		t.Fatal(err)
	}
	if err := e.RevokeKey(packet.KeySuperseded, "test", &packet.Config{Time: func() time.Time { return time.Now().Add(-time.Second) }}); err != nil {
		t.Fatal(err)
	}
	kr, err := signature.ReadKeyring(bytes.NewReader(serializeBinary(t, e)))
	if err != nil {
		t.Fatal(err)
	}
	return kr, sig.Bytes()
}

func TestVerifyClearsigned(t *testing.T) {
	signer := signtest.NewKey(t, "fedora")
	other := signtest.NewKey(t, "other")
	expired := signtest.NewKey(t, "expired", signtest.Expired())
	sum := func(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }
	text := []byte("# Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2: 494600192 bytes\n" +
		"SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2) = " + sum("qcow") + "\n" +
		"-----a line that needs dash-escaping\n")
	good := signer.Clearsign(text)
	forged := sum("evil") + "  Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2\n"

	tests := []struct {
		name    string
		keyring *signature.Keyring
		in      []byte
		want    []byte // expected plaintext when no error
		wantErr error
	}{
		{name: "good", keyring: signer.Keyring(), in: good, want: text},
		{name: "good with CRLF", keyring: signer.Keyring(), in: bytes.ReplaceAll(good, []byte("\n"), []byte("\r\n")), want: text},
		{name: "forged line before the armor is dropped", keyring: signer.Keyring(), in: append([]byte(forged), good...), want: text},
		{name: "forged line after the signature is dropped", keyring: signer.Keyring(), in: append(append([]byte{}, good...), forged...), want: text},
		{name: "tampered line", keyring: signer.Keyring(), in: bytes.Replace(good, []byte("494600192"), []byte("494600193"), 1), wantErr: signature.ErrBadSignature},
		{name: "forged line inserted inside", keyring: signer.Keyring(), in: bytes.Replace(good, []byte("# Fedora"), []byte(forged+"# Fedora"), 1), wantErr: signature.ErrBadSignature},
		{name: "wrong key", keyring: other.Keyring(), in: good, wantErr: signature.ErrUnknownSigner},
		{name: "expired key", keyring: expired.Keyring(), in: expired.Clearsign(text), wantErr: signature.ErrExpiredKey},
		{name: "not clearsigned", keyring: signer.Keyring(), in: text, wantErr: signature.ErrNoSignature},
		{name: "signature block missing", keyring: signer.Keyring(), in: good[:bytes.Index(good, []byte("-----BEGIN PGP SIGNATURE"))], wantErr: signature.ErrNoSignature},
		{name: "empty", keyring: signer.Keyring(), in: nil, wantErr: signature.ErrNoSignature},
		{name: "too large", keyring: signer.Keyring(), in: append(bytes.Repeat([]byte("#\n"), signature.MaxClearsignedSize/2), good...), wantErr: signature.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plain, s, err := tt.keyring.VerifyClearsigned(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("VerifyClearsigned error = %v, want %v", err, tt.wantErr)
				}
				if plain != nil || s != (signature.Signer{}) {
					t.Errorf("failed verification returned plaintext %q, signer %+v", plain, s)
				}
				return
			}
			if err != nil {
				t.Fatalf("VerifyClearsigned: %v", err)
			}
			if !bytes.Equal(plain, tt.want) {
				t.Errorf("plaintext = %q, want %q", plain, tt.want)
			}
			if s.Fingerprint != signer.Fingerprint() {
				t.Errorf("signer = %+v, want %s", s, signer.Fingerprint())
			}
		})
	}
}

// A signature dated after the local clock is refused (the library calls it
// expired), and the message points at the clock, not at the key.
func TestSignatureFromTheFuture(t *testing.T) {
	e := newEntity(t, "future")
	data := []byte("SHA256 (a.img) = 00\n")
	future := time.Now().Add(2 * time.Hour)
	var sig bytes.Buffer
	if err := openpgp.DetachSign(&sig, e, bytes.NewReader(data), &packet.Config{Time: func() time.Time { return future }}); err != nil {
		t.Fatal(err)
	}
	kr, err := signature.ReadKeyring(bytes.NewReader(serializeBinary(t, e)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = kr.VerifyDetached(bytes.NewReader(data), sig.Bytes())
	if !errors.Is(err, signature.ErrExpiredKey) || !strings.Contains(err.Error(), "check the system time") {
		t.Fatalf("VerifyDetached = %v; want ErrExpiredKey with a clock hint", err)
	}
}

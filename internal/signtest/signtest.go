// Package signtest makes throwaway OpenPGP keys and signs test fixtures
// with them, so tests of mirrors and pipelines can serve signed manifests
// without touching the real trust anchors. Keys are Ed25519: generating one
// takes well under a millisecond, unlike RSA.
package signtest

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/vmprep/vmprep/pkg/signature"
)

// Key is a throwaway signing key bound to one test.
type Key struct {
	t      testing.TB
	entity *openpgp.Entity
	// signAt is the creation time written into signatures; for an expired
	// key it lies inside the key's validity so only the expiry is wrong.
	signAt func() time.Time
}

// Option changes how NewKey makes a key.
type Option func(*keyOptions)

type keyOptions struct {
	created  time.Time
	lifetime time.Duration
}

// Expired makes a key whose validity ended an hour ago; its signatures are
// dated while it was still valid, so verification fails only on expiry.
func Expired() Option {
	return func(o *keyOptions) {
		o.created = time.Now().Add(-3 * time.Hour)
		o.lifetime = time.Hour
	}
}

// NewKey generates an Ed25519 key whose user id is "name <name@vmprep.test>".
func NewKey(t testing.TB, name string, opts ...Option) *Key {
	t.Helper()
	o := keyOptions{created: time.Now().Add(-time.Minute)}
	for _, opt := range opts {
		opt(&o)
	}
	created := o.created
	cfg := &packet.Config{
		Algorithm:       packet.PubKeyAlgoEdDSA,
		Time:            func() time.Time { return created },
		KeyLifetimeSecs: uint32(o.lifetime / time.Second),
	}
	e, err := openpgp.NewEntity(name, "", name+"@vmprep.test", cfg)
	if err != nil {
		t.Fatalf("signtest: generate key %q: %v", name, err)
	}
	signAt := func() time.Time { return time.Now() }
	if o.lifetime > 0 {
		mid := created.Add(o.lifetime / 2)
		signAt = func() time.Time { return mid }
	}
	return &Key{t: t, entity: e, signAt: signAt}
}

func (k *Key) config() *packet.Config {
	return &packet.Config{Time: k.signAt}
}

// Keyring returns a keyring holding only this key's public part.
func (k *Key) Keyring() *signature.Keyring {
	k.t.Helper()
	kr, err := signature.ReadKeyring(bytes.NewReader(k.ArmoredPublic()))
	if err != nil {
		k.t.Fatalf("signtest: keyring: %v", err)
	}
	return kr
}

// ArmoredPublic returns the armored public key, as a keyring file would hold it.
func (k *Key) ArmoredPublic() []byte {
	k.t.Helper()
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
	if err != nil {
		k.t.Fatalf("signtest: armor: %v", err)
	}
	if err := k.entity.Serialize(w); err != nil {
		k.t.Fatalf("signtest: serialize public key: %v", err)
	}
	if err := w.Close(); err != nil {
		k.t.Fatalf("signtest: armor: %v", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes()
}

// Identity is the key's user id, as signature.Signer.Identity reports it.
func (k *Key) Identity() string {
	return k.entity.PrimaryIdentity().Name
}

// Fingerprint is the primary key fingerprint, upper-case hex.
func (k *Key) Fingerprint() string {
	return strings.ToUpper(hex.EncodeToString(k.entity.PrimaryKey.Fingerprint))
}

// DetachedArmored signs data, returning an armored detached signature (like SHA256SUMS.gpg).
func (k *Key) DetachedArmored(data []byte) []byte {
	k.t.Helper()
	var buf bytes.Buffer
	if err := openpgp.ArmoredDetachSign(&buf, k.entity, bytes.NewReader(data), k.config()); err != nil {
		k.t.Fatalf("signtest: armored detached signature: %v", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes()
}

// DetachedBinary signs data, returning a binary detached signature (like Arch's .sig).
func (k *Key) DetachedBinary(data []byte) []byte {
	k.t.Helper()
	var buf bytes.Buffer
	if err := openpgp.DetachSign(&buf, k.entity, bytes.NewReader(data), k.config()); err != nil {
		k.t.Fatalf("signtest: binary detached signature: %v", err)
	}
	return buf.Bytes()
}

// Clearsign returns data as a clearsigned message (like Fedora's CHECKSUM).
func (k *Key) Clearsign(data []byte) []byte {
	k.t.Helper()
	var buf bytes.Buffer
	w, err := clearsign.Encode(&buf, k.entity.PrivateKey, k.config())
	if err != nil {
		k.t.Fatalf("signtest: clearsign: %v", err)
	}
	if _, err := w.Write(data); err != nil {
		k.t.Fatalf("signtest: clearsign: %v", err)
	}
	if err := w.Close(); err != nil {
		k.t.Fatalf("signtest: clearsign: %v", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes()
}

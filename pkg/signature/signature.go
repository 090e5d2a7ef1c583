// Package signature verifies OpenPGP signatures over checksum manifests
// against pinned keyrings: detached signatures (Ubuntu SHA256SUMS.gpg,
// AlmaLinux CHECKSUM.asc, Arch .sig) and clearsigned files (Fedora CHECKSUM).
//
// Any failure — unknown signer, bad, missing, expired or revoked — is an
// error; there is no "valid but untrusted" result to misread.
package signature

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/vmprep/vmprep/pkg/signature/keys"
)

// Input caps: keyrings, signatures and clearsigned manifests are small;
// anything larger is hostile or a mistake, and is refused before parsing.
const (
	MaxKeyringSize     = 4 << 20
	MaxSignatureSize   = 1 << 20
	MaxClearsignedSize = 16 << 20
)

var (
	// ErrUnknownSigner: the signature was made by no key in the keyring.
	ErrUnknownSigner = errors.New("signer not in keyring")
	// ErrBadSignature: the signature is malformed or does not match the data.
	ErrBadSignature = errors.New("bad signature")
	// ErrNoSignature: there is no signature to check (empty input, no
	// signature packet, no clearsigned block).
	ErrNoSignature = errors.New("no signature")
	// ErrExpiredKey: the signing key (or the signature itself) has expired.
	ErrExpiredKey = errors.New("signing key or signature expired")
	// ErrRevokedKey: the signing key has been revoked.
	ErrRevokedKey = errors.New("signing key revoked")
	// ErrNoKeys: a keyring holds no usable key.
	ErrNoKeys = errors.New("no OpenPGP keys")
	// ErrNotOpenPGP: the input is neither armored nor binary OpenPGP data.
	ErrNotOpenPGP = errors.New("not OpenPGP data")
	// ErrTooLarge: an input exceeds its size cap.
	ErrTooLarge = errors.New("input too large")
)

const (
	armorPublicKey  = "PGP PUBLIC KEY BLOCK"
	armorPrivateKey = "PGP PRIVATE KEY BLOCK"
	armorSignature  = "PGP SIGNATURE"
)

// Keyring is a set of trusted OpenPGP public keys.
type Keyring struct {
	entities openpgp.EntityList
}

// Signer identifies the key that made a good signature.
type Signer struct {
	// Fingerprint of the primary key, upper-case hex (40 characters for v4 keys).
	Fingerprint string
	// Identity is the primary user id, e.g. "UEC Image Automatic Signing Key <cdimage@ubuntu.com>".
	Identity string
}

// UbuntuCloudImages returns the embedded Ubuntu cloud-image keyring. Each
// call parses a fresh copy so callers share no mutable state.
func UbuntuCloudImages() *Keyring {
	k, err := ReadKeyring(bytes.NewReader(keys.UbuntuCloudImage()))
	if err != nil {
		// The embedded keyring is fixed at build time and covered by tests.
		panic("signature: embedded Ubuntu keyring unreadable: " + err.Error())
	}
	return k
}

// LoadKeyringFile reads an armored or binary keyring from path.
func LoadKeyringFile(path string) (*Keyring, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load keyring: %w", err)
	}
	defer f.Close()
	k, err := ReadKeyring(f)
	if err != nil {
		return nil, fmt.Errorf("load keyring %s: %w", path, err)
	}
	return k, nil
}

// ReadKeyring reads one or more public keys, armored (possibly several
// concatenated blocks) or binary, detected from the content.
func ReadKeyring(r io.Reader) (*Keyring, error) {
	data, err := readCapped(r, MaxKeyringSize, "keyring")
	if err != nil {
		return nil, err
	}
	var el openpgp.EntityList
	switch detect(data) {
	case formatBinary:
		el, err = openpgp.ReadKeyRing(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("read keyring: %w: %w", ErrNoKeys, err)
		}
	case formatArmored:
		el, err = readArmoredKeyBlocks(data)
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("read keyring: %w (neither an armored block nor a binary packet)", ErrNotOpenPGP)
	}
	if len(el) == 0 {
		return nil, fmt.Errorf("read keyring: %w", ErrNoKeys)
	}
	return &Keyring{entities: el}, nil
}

// readArmoredKeyBlocks decodes every armored key block in data; keyring
// files are sometimes several exports concatenated.
func readArmoredKeyBlocks(data []byte) (openpgp.EntityList, error) {
	var el openpgp.EntityList
	rest := data
	for n := 0; ; n++ {
		i := bytes.Index(rest, []byte("-----BEGIN PGP "))
		if i < 0 {
			if n == 0 {
				return nil, fmt.Errorf("read keyring: %w: no armored block", ErrNotOpenPGP)
			}
			return el, nil
		}
		rest = rest[i:]
		end := bytes.Index(rest, []byte("-----END PGP "))
		if end < 0 {
			return nil, fmt.Errorf("read keyring: armored block %d: %w: no END line", n+1, ErrNotOpenPGP)
		}
		// Include the END line itself.
		if nl := bytes.IndexByte(rest[end:], '\n'); nl >= 0 {
			end += nl + 1
		} else {
			end = len(rest)
		}
		block, err := armor.Decode(bytes.NewReader(rest[:end]))
		if err != nil {
			return nil, fmt.Errorf("read keyring: armored block %d: %w: %w", n+1, ErrNotOpenPGP, err)
		}
		if block.Type != armorPublicKey && block.Type != armorPrivateKey {
			return nil, fmt.Errorf("read keyring: armored block %d is %q, want %q: %w", n+1, block.Type, armorPublicKey, ErrNoKeys)
		}
		got, err := openpgp.ReadKeyRing(block.Body)
		if err != nil {
			return nil, fmt.Errorf("read keyring: armored block %d: %w: %w", n+1, ErrNoKeys, err)
		}
		el = append(el, got...)
		rest = rest[end:]
	}
}

// Fingerprints lists the primary-key fingerprints, upper-case hex, in keyring order.
func (k *Keyring) Fingerprints() []string {
	if k == nil {
		return nil
	}
	out := make([]string, 0, len(k.entities))
	for _, e := range k.entities {
		out = append(out, fingerprint(e))
	}
	return out
}

// VerifyDetached checks a detached signature (armored or binary, detected
// from the content) over everything read from signed.
func (k *Keyring) VerifyDetached(signed io.Reader, sig []byte) (Signer, error) {
	if len(sig) > MaxSignatureSize {
		return Signer{}, fmt.Errorf("verify detached signature: %w: %d bytes, cap %d", ErrTooLarge, len(sig), MaxSignatureSize)
	}
	packets, sigs, err := signaturePackets(sig)
	if err != nil {
		return Signer{}, fmt.Errorf("verify detached signature: %w", err)
	}
	s, err := k.verify(signed, packets, sigs)
	if err != nil {
		return Signer{}, fmt.Errorf("verify detached signature: %w", err)
	}
	return s, nil
}

// VerifyClearsigned checks a clearsigned message and returns only the
// signed text: anything before the BEGIN PGP SIGNED MESSAGE line or after
// the signature is discarded, so unsigned lines can never reach a parser.
// The text has "\n" line endings and dash-escaping undone, as in the
// OpenPGP cleartext framework.
func (k *Keyring) VerifyClearsigned(data []byte) (plaintext []byte, s Signer, err error) {
	if len(data) > MaxClearsignedSize {
		return nil, Signer{}, fmt.Errorf("verify clearsigned message: %w: %d bytes, cap %d", ErrTooLarge, len(data), MaxClearsignedSize)
	}
	block, _ := clearsign.Decode(data)
	if block == nil {
		return nil, Signer{}, fmt.Errorf("verify clearsigned message: %w: no complete BEGIN PGP SIGNED MESSAGE block", ErrNoSignature)
	}
	if block.ArmoredSignature.Type != armorSignature {
		return nil, Signer{}, fmt.Errorf("verify clearsigned message: %w: armor block is %q, want %q", ErrBadSignature, block.ArmoredSignature.Type, armorSignature)
	}
	// The armored block lies within data, so it is already bounded by MaxClearsignedSize.
	body, err := io.ReadAll(block.ArmoredSignature.Body)
	if err != nil {
		return nil, Signer{}, fmt.Errorf("verify clearsigned message: %w: %w", ErrBadSignature, err)
	}
	sigs, err := checkSignaturePackets(body)
	if err != nil {
		return nil, Signer{}, fmt.Errorf("verify clearsigned message: %w", err)
	}
	s, err = k.verify(bytes.NewReader(block.Bytes), body, sigs)
	if err != nil {
		return nil, Signer{}, fmt.Errorf("verify clearsigned message: %w", err)
	}
	return block.Plaintext, s, nil
}

func (k *Keyring) verify(signed io.Reader, packets []byte, sigs []*packet.Signature) (Signer, error) {
	if k == nil || len(k.entities) == 0 {
		return Signer{}, fmt.Errorf("%w: the keyring is empty", ErrUnknownSigner)
	}
	if err := k.checkHash(sigs); err != nil {
		return Signer{}, err
	}
	// Failing to read the signed data is an I/O problem, perhaps worth a
	// retry, not evidence of a bad signature: keep it apart.
	src := &readErrorRecorder{r: signed}
	// A nil config means the library defaults: the current time, and
	// expired or revoked keys reported as errors.
	entity, err := openpgp.CheckDetachedSignature(k.entities, src, bytes.NewReader(packets), nil)
	if src.err != nil {
		return Signer{}, fmt.Errorf("read signed data: %w", src.err)
	}
	if err != nil {
		err = mapError(err)
		if errors.Is(err, ErrExpiredKey) {
			err = withClockHint(err, sigs, time.Now())
		}
		if errors.Is(err, ErrUnknownSigner) {
			err = fmt.Errorf("%w (signed by %s; keyring holds %s)", err,
				strings.Join(issuers(sigs), ", "), strings.Join(k.Fingerprints(), ", "))
		}
		return Signer{}, err
	}
	if entity == nil {
		return Signer{}, fmt.Errorf("%w: library returned no signer", ErrBadSignature)
	}
	return signerOf(entity), nil
}

// withClockHint explains an "expired" verdict that is really clock skew:
// the library reports a signature dated after the local clock as expired,
// which sends an operator looking at keys instead of at the host's time.
func withClockHint(err error, sigs []*packet.Signature, now time.Time) error {
	for _, sig := range sigs {
		if sig.CreationTime.Unix() > now.Unix() {
			return fmt.Errorf("%w (the signature is dated %s, after this host's clock %s: check the system time)",
				err, sig.CreationTime.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
	}
	return err
}

// readErrorRecorder remembers the first read error other than io.EOF.
type readErrorRecorder struct {
	r   io.Reader
	err error
}

func (r *readErrorRecorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// weakHash names a hash refused for message signatures. The v1 openpgp
// API does not apply packet.Config's RejectMessageHashAlgorithms, so the
// check is ours.
func weakHash(h crypto.Hash) (string, bool) {
	switch h {
	case crypto.MD5:
		return "MD5", true
	case crypto.SHA1:
		return "SHA-1", true
	case crypto.RIPEMD160:
		return "RIPEMD-160", true
	}
	return "", false
}

// checkHash refuses a weak hash in the signature the library will check:
// like CheckDetachedSignature, the first whose issuer holds a signing key
// in the keyring.
func (k *Keyring) checkHash(sigs []*packet.Signature) error {
	for _, sig := range sigs {
		if sig.IssuerKeyId == nil || len(k.entities.KeysByIdUsage(*sig.IssuerKeyId, packet.KeyFlagSign)) == 0 {
			continue
		}
		if name, weak := weakHash(sig.Hash); weak {
			return fmt.Errorf("%w: made with weak hash %s", ErrBadSignature, name)
		}
		return nil
	}
	return nil
}

func issuers(sigs []*packet.Signature) []string {
	out := make([]string, 0, len(sigs))
	for _, sig := range sigs {
		switch {
		case len(sig.IssuerFingerprint) > 0:
			out = append(out, strings.ToUpper(hex.EncodeToString(sig.IssuerFingerprint)))
		case sig.IssuerKeyId != nil:
			out = append(out, fmt.Sprintf("key ID %016X", *sig.IssuerKeyId))
		default:
			out = append(out, "(no issuer)")
		}
	}
	return out
}

// mapError turns library errors into this package's sentinels, keeping the
// original in the chain for the message.
func mapError(err error) error {
	switch {
	case errors.Is(err, pgperrors.ErrUnknownIssuer):
		return fmt.Errorf("%w: %w", ErrUnknownSigner, err)
	case errors.Is(err, pgperrors.ErrKeyExpired), errors.Is(err, pgperrors.ErrSignatureExpired):
		return fmt.Errorf("%w: %w", ErrExpiredKey, err)
	case errors.Is(err, pgperrors.ErrKeyRevoked):
		return fmt.Errorf("%w: %w", ErrRevokedKey, err)
	}
	return fmt.Errorf("%w: %w", ErrBadSignature, err)
}

// signaturePackets returns the binary packets of an armored or binary
// detached signature, after checking that they hold at least one signature
// and nothing else. The library would report an empty or key-less input as
// "unknown issuer", which hides the real problem.
func signaturePackets(sig []byte) ([]byte, []*packet.Signature, error) {
	if len(bytes.TrimSpace(sig)) == 0 {
		return nil, nil, fmt.Errorf("%w: signature is empty", ErrNoSignature)
	}
	var body []byte
	switch detect(sig) {
	case formatBinary:
		body = sig
	case formatArmored:
		block, err := armor.Decode(bytes.NewReader(sig))
		if err != nil {
			return nil, nil, fmt.Errorf("%w: armor: %w", ErrBadSignature, err)
		}
		if block.Type != armorSignature {
			return nil, nil, fmt.Errorf("%w: armor block is %q, want %q", ErrBadSignature, block.Type, armorSignature)
		}
		body, err = io.ReadAll(io.LimitReader(block.Body, MaxSignatureSize))
		if err != nil {
			return nil, nil, fmt.Errorf("%w: armor: %w", ErrBadSignature, err)
		}
	default:
		return nil, nil, fmt.Errorf("%w: %w", ErrBadSignature, ErrNotOpenPGP)
	}
	sigs, err := checkSignaturePackets(body)
	if err != nil {
		return nil, nil, err
	}
	return body, sigs, nil
}

// checkSignaturePackets parses body, which must hold one or more
// signature packets and nothing else.
func checkSignaturePackets(body []byte) ([]*packet.Signature, error) {
	if len(body) == 0 {
		return nil, fmt.Errorf("%w: signature block is empty", ErrNoSignature)
	}
	r := packet.NewReader(bytes.NewReader(body))
	var sigs []*packet.Signature
	for n := 1; ; n++ {
		p, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: packet %d: %w", ErrBadSignature, n, err)
		}
		sig, ok := p.(*packet.Signature)
		if !ok {
			return nil, fmt.Errorf("%w: packet %d is %T, not a signature", ErrBadSignature, n, p)
		}
		sigs = append(sigs, sig)
	}
	if len(sigs) == 0 {
		return nil, fmt.Errorf("%w: no signature packet", ErrNoSignature)
	}
	return sigs, nil
}

type format int

const (
	formatUnknown format = iota
	formatBinary
	formatArmored
)

// detect tells binary OpenPGP (every packet header has the top bit set)
// from ASCII armor.
func detect(b []byte) format {
	if len(b) > 0 && b[0]&0x80 != 0 {
		return formatBinary
	}
	if bytes.Contains(b, []byte("-----BEGIN PGP ")) {
		return formatArmored
	}
	return formatUnknown
}

func readCapped(r io.Reader, limit int64, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read %s: %w: more than %d bytes", what, ErrTooLarge, limit)
	}
	return data, nil
}

func fingerprint(e *openpgp.Entity) string {
	return strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint))
}

func signerOf(e *openpgp.Entity) Signer {
	s := Signer{Fingerprint: fingerprint(e)}
	if id := e.PrimaryIdentity(); id != nil {
		s.Identity = id.Name
	}
	return s
}

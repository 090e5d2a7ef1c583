package content

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/pkg/digest"
)

// BlobInfo describes a committed blob.
type BlobInfo struct {
	// Path is the absolute path of the read-only blob file.
	Path   string        `json:"path"`
	SHA256 digest.Digest `json:"sha256"`
	Size   int64         `json:"size"`
}

// MismatchError reports content that did not match what was expected. It
// matches ErrDigestMismatch, ErrSizeMismatch when the sizes differ, and
// ErrQuarantined when the file was moved to quarantine.
type MismatchError struct {
	// Path is where the file was.
	Path     string
	Expected digest.Digest
	// Actual is in Expected's algorithm; zero when the size check failed
	// first and the content was not hashed.
	Actual       digest.Digest
	ExpectedSize int64 // 0: not checked
	ActualSize   int64
	// QuarantinePath is where the file went; empty if it had to be deleted.
	QuarantinePath string
}

func (e *MismatchError) sizeDiffers() bool {
	return e.ExpectedSize > 0 && e.ExpectedSize != e.ActualSize
}

func (e *MismatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "store: %s: ", e.Path)
	if e.sizeDiffers() {
		fmt.Fprintf(&b, "size mismatch for %s: expected %d bytes, got %d", e.Expected, e.ExpectedSize, e.ActualSize)
	} else {
		fmt.Fprintf(&b, "digest mismatch: expected %s, got %s", e.Expected, e.Actual)
	}
	if e.QuarantinePath != "" {
		fmt.Fprintf(&b, " (moved to %s)", e.QuarantinePath)
	} else {
		b.WriteString(" (removed)")
	}
	return b.String()
}

// Permanent reports that the error cannot pass with time: the bytes are not
// the expected ones, and reading them again does not change that.
func (e *MismatchError) Permanent() bool { return true }

// Is makes errors.Is(err, ErrDigestMismatch / ErrSizeMismatch / ErrQuarantined) work.
func (e *MismatchError) Is(target error) bool {
	switch target {
	case ErrDigestMismatch:
		return true
	case ErrSizeMismatch:
		return e.sizeDiffers()
	case ErrQuarantined:
		return e.QuarantinePath != ""
	}
	return false
}

func normalize(d digest.Digest) (digest.Digest, error) {
	n, err := digest.New(d.Algorithm, d.Hex)
	if err != nil {
		return digest.Digest{}, fmt.Errorf("store: expected digest %q: %w", d.String(), err)
	}
	return n, nil
}

func (s *Store) blobPath(hex string) string      { return s.path(dirBlobs, "sha256", hex) }
func (s *Store) blobStampPath(hex string) string { return s.path(dirStamps, "blobs", hex) }
func (s *Store) aliasPath(d digest.Digest) string {
	return s.path(dirIndex, string(d.Algorithm), d.Hex)
}

// IngestPath is where the download engine writes the partial file for
// expected (its sidecar is IngestPath(expected)+".meta"). It is deterministic,
// so a restarted download resumes; hold Lock(ctx, expected.String()) while
// writing it. It returns "" for an invalid digest.
func (s *Store) IngestPath(expected digest.Digest) string {
	d, err := normalize(expected)
	if err != nil {
		return ""
	}
	return s.path(dirIngest, string(d.Algorithm)+"-"+d.Hex)
}

// resolveSHA256 maps a normalised digest to the hex of the SHA-256 blob.
func (s *Store) resolveSHA256(d digest.Digest) (string, error) {
	if d.Algorithm == digest.SHA256 {
		return d.Hex, nil
	}
	b, err := ReadCapped(s.aliasPath(d), 256)
	if notExist(err) {
		return "", fmt.Errorf("store: %s: %w", d, ErrNotFound)
	}
	if errors.Is(err, errDamaged) {
		// As for bad content below: fetch again, and Commit rewrites it.
		s.log.Warn("store: ignoring damaged alias", "alias", s.aliasPath(d), "err", err)
		return "", fmt.Errorf("store: %s: %w: %w", d, err, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("store: alias for %s: %w", d, err)
	}
	h, err := digest.New(digest.SHA256, strings.TrimSpace(string(b)))
	if err != nil {
		// A damaged alias is only an index entry: treat as absent, the blob
		// will be fetched and the alias rewritten.
		s.log.Warn("store: ignoring damaged alias", "alias", s.aliasPath(d), "err", err)
		return "", fmt.Errorf("store: %s: damaged alias: %w", d, ErrNotFound)
	}
	return h.Hex, nil
}

// Lookup finds the committed blob for expected (SHA-256, or SHA-512 through
// the alias index). The fast path reads nothing but a stat and the stamp
// recorded at commit; if they disagree the blob is re-hashed, and content
// that no longer matches is quarantined and reported as ErrNotFound (also
// matching ErrQuarantined) so that the caller fetches it again.
func (s *Store) Lookup(ctx context.Context, expected digest.Digest) (BlobInfo, error) {
	exp, err := normalize(expected)
	if err != nil {
		return BlobInfo{}, err
	}
	hex, err := s.resolveSHA256(exp)
	if err != nil {
		return BlobInfo{}, err
	}
	path := s.blobPath(hex)
	fi, err := os.Lstat(path)
	if notExist(err) {
		return BlobInfo{}, fmt.Errorf("store: blob %s: %w", exp, ErrNotFound)
	}
	if err != nil {
		return BlobInfo{}, fmt.Errorf("store: blob %s: %w", exp, err)
	}
	if fi.Mode().IsRegular() {
		if _, ok := stampMatches(s.blobStampPath(hex), fi); ok {
			return BlobInfo{Path: path, SHA256: digest.Digest{Algorithm: digest.SHA256, Hex: hex}, Size: fi.Size()}, nil
		}
	}
	unlock, _, err := s.lock(ctx, lockBlob, hex, false)
	if err != nil {
		return BlobInfo{}, fmt.Errorf("store: blob %s: %w", exp, err)
	}
	defer unlock()
	info, _, err := s.checkBlobLocked(ctx, hex, false)
	return info, err
}

// checkBlobLocked verifies blob hex by content (unless its stamp matches and
// !force), restoring its stamp if good and quarantining it if bad. The blob
// lock must be held. quarantined is set when the blob was moved away.
func (s *Store) checkBlobLocked(ctx context.Context, hex string, force bool) (info BlobInfo, quarantined string, err error) {
	path := s.blobPath(hex)
	want := digest.Digest{Algorithm: digest.SHA256, Hex: hex}
	fi, err := os.Lstat(path)
	if notExist(err) {
		return BlobInfo{}, "", fmt.Errorf("store: blob %s: %w", want, ErrNotFound)
	}
	if err != nil {
		return BlobInfo{}, "", fmt.Errorf("store: blob %s: %w", want, err)
	}
	old, ok := stampMatches(s.blobStampPath(hex), fi)
	if ok && !force && fi.Mode().IsRegular() {
		return BlobInfo{Path: path, SHA256: want, Size: fi.Size()}, "", nil
	}
	var actual string
	var size int64
	reason := ""
	if !fi.Mode().IsRegular() {
		reason = fmt.Sprintf("a %s, not a regular file", fileKind(fi.Mode()))
	} else {
		actual, _, size, err = s.hashPath(ctx, path, "")
		if err != nil {
			return BlobInfo{}, "", fmt.Errorf("store: verify blob %s: %w", want, err)
		}
		if actual != hex {
			reason = "content no longer matches its digest"
		}
	}
	if reason != "" {
		q, qerr := s.quarantine(path, quarantineNote{
			Reason: reason, Expected: want.String(), Actual: sha256String(actual), ActualSize: size,
		})
		_ = os.Remove(s.blobStampPath(hex))
		if qerr != nil {
			return BlobInfo{}, "", qerr
		}
		return BlobInfo{}, q, &QuarantinedError{What: "blob " + want.String(), Reason: reason, To: q}
	}
	// Good content with a stale or missing stamp (a touch, a copy of the
	// store, a crash between rename and stamp): re-seal it.
	if err := s.seal(path, s.blobStampPath(hex), stamp{SHA256: hex, CommittedAt: old.CommittedAt}); err != nil {
		return BlobInfo{}, "", err
	}
	return BlobInfo{Path: path, SHA256: want, Size: size}, "", nil
}

func sha256String(hex string) string {
	if hex == "" {
		return ""
	}
	return string(digest.SHA256) + ":" + hex
}

// seal makes path read-only and records its stamp: tmpl's digests and
// CommittedAt (zero: now) with the stat fields filled in.
func (s *Store) seal(path, stampPath string, tmpl stamp) error {
	_, err := s.sealStamp(path, stampPath, tmpl)
	return err
}

// sealStamp is seal, returning the stamp it recorded.
func (s *Store) sealStamp(path, stampPath string, tmpl stamp) (stamp, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return stamp{}, fmt.Errorf("store: seal %s: %w", path, err)
	}
	if fi.Mode().Perm() != 0o444 {
		if err := os.Chmod(path, 0o444); err != nil {
			return stamp{}, fmt.Errorf("store: seal %s: %w", path, err)
		}
		if fi, err = os.Lstat(path); err != nil {
			return stamp{}, fmt.Errorf("store: seal %s: %w", path, err)
		}
	}
	st := statStamp(fi)
	st.SHA256, st.SparseSHA256, st.CommittedAt = tmpl.SHA256, tmpl.SparseSHA256, tmpl.CommittedAt
	if st.CommittedAt.IsZero() {
		st.CommittedAt = time.Now().UTC()
	}
	if err := writeStamp(stampPath, st); err != nil {
		return stamp{}, fmt.Errorf("store: stamp %s: %w", path, err)
	}
	return st, nil
}

// Commit verifies the file at ingestPath (which must be in the store's
// ingest/ directory) against expected and size (if > 0), and publishes it as
// blobs/sha256/<hex>. On a mismatch the file is quarantined and a
// *MismatchError returned. Commit is idempotent: if the blob is already
// present (for instance committed by another process meanwhile) the ingest
// file is removed and the existing blob returned. Holding the caller's
// Lock(expected.String()) while calling Commit is fine.
func (s *Store) Commit(ctx context.Context, ingestPath string, expected digest.Digest, size int64) (BlobInfo, error) {
	exp, err := normalize(expected)
	if err != nil {
		return BlobInfo{}, err
	}
	src, err := filepath.Abs(ingestPath)
	if err != nil {
		return BlobInfo{}, fmt.Errorf("store: commit %q: %w", ingestPath, err)
	}
	if filepath.Dir(src) != s.path(dirIngest) {
		return BlobInfo{}, fmt.Errorf("store: commit %s: %w: not directly in %s", src, ErrInvalidName, s.path(dirIngest))
	}
	// Not following a symlink nor blocking on a pipe planted in ingest/.
	f, err := openSmall(src)
	if err != nil {
		return BlobInfo{}, fmt.Errorf("store: commit %s: %w", src, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return BlobInfo{}, fmt.Errorf("store: commit %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return BlobInfo{}, fmt.Errorf("store: commit %s: a %s, not a regular file", src, fileKind(fi.Mode()))
	}
	mismatch := func(actual digest.Digest, actualSize int64) error {
		f.Close()
		e := &MismatchError{Path: src, Expected: exp, Actual: actual, ExpectedSize: size, ActualSize: actualSize}
		note := quarantineNote{
			Reason: "failed verification at commit", Expected: exp.String(), Actual: actual.String(),
			ExpectedSize: size, ActualSize: actualSize,
		}
		if !e.sizeDiffers() {
			note.Reason = "digest mismatch at commit"
		} else {
			note.Reason = "size mismatch at commit"
		}
		q, qerr := s.quarantine(src, note)
		_ = os.Remove(src + ".meta")
		if qerr != nil {
			return fmt.Errorf("%w; %w", e, qerr)
		}
		e.QuarantinePath = q
		return e
	}
	if size > 0 && fi.Size() != size {
		return BlobInfo{}, mismatch(digest.Digest{}, fi.Size())
	}
	var extra digest.Algorithm
	if exp.Algorithm != digest.SHA256 {
		extra = exp.Algorithm
	}
	var (
		sumHex string
		actual digest.Digest
		n      int64
	)
	if known, ok := s.Hashed(src, fi, exp); ok {
		// This process hashed exactly this file already (see hashedFiles).
		sumHex, actual, n = known, exp, fi.Size()
		s.log.Debug("store: committing on this process's own hash of the file", "path", src, "expected", exp)
		s.step("commit:known")
	} else {
		var extraDigest digest.Digest
		sumHex, extraDigest, n, err = s.hashReader(ctx, f, extra)
		if err != nil {
			return BlobInfo{}, fmt.Errorf("store: commit %s: %w", src, err)
		}
		actual = digest.Digest{Algorithm: digest.SHA256, Hex: sumHex}
		if extra != "" {
			actual = extraDigest
		}
	}
	if (size > 0 && n != size) || actual.Hex != exp.Hex {
		return BlobInfo{}, mismatch(actual, n)
	}
	// Data must be durable before the name says it is verified.
	if err := atomicfile.Sync(f); err != nil {
		return BlobInfo{}, fmt.Errorf("store: commit %s: fsync: %w", src, err)
	}
	f.Close()
	s.step("commit:verified")

	unlockGC, err := s.PublishLock(ctx)
	if err != nil {
		return BlobInfo{}, fmt.Errorf("store: commit %s: %w", src, err)
	}
	defer unlockGC()
	unlock, _, err := s.lock(ctx, lockBlob, sumHex, false)
	if err != nil {
		return BlobInfo{}, fmt.Errorf("store: commit %s: %w", src, err)
	}
	defer unlock()

	final := s.blobPath(sumHex)
	info := BlobInfo{Path: final, SHA256: digest.Digest{Algorithm: digest.SHA256, Hex: sumHex}, Size: n}
	if bfi, err := os.Lstat(final); err == nil && bfi.Mode().IsRegular() {
		if _, ok := stampMatches(s.blobStampPath(sumHex), bfi); ok {
			if err := s.writeAlias(exp, sumHex); err != nil {
				return BlobInfo{}, err
			}
			s.removeIngest(src)
			return info, nil
		}
	} else if err == nil {
		// A directory or symlink in the way would make the rename fail on
		// every attempt: move it aside as Lookup would.
		if _, err := s.quarantine(final, quarantineNote{Reason: fmt.Sprintf("a %s, not a regular file", fileKind(bfi.Mode())), Expected: info.SHA256.String()}); err != nil {
			return BlobInfo{}, fmt.Errorf("store: commit %s: %w", src, err)
		}
	}
	// The file we hashed must still be the one we publish.
	cur, err := os.Lstat(src)
	if err != nil || !os.SameFile(fi, cur) {
		return BlobInfo{}, fmt.Errorf("store: commit %s: ingest file replaced or removed during commit", src)
	}
	// The alias goes before the blob: an alias whose blob a crash kept from
	// being published is harmless (Lookup says ErrNotFound, GC removes it),
	// whereas a published blob without its alias is invisible to SHA-512
	// lookups and to the records that name it, so it would be fetched again.
	if err := s.writeAlias(exp, sumHex); err != nil {
		return BlobInfo{}, err
	}
	s.step("commit:aliased")
	// No chmod before the rename: a crash must leave the ingest file writable
	// for the download engine. seal makes the published blob read-only.
	s.step("commit:before-rename")
	if err := os.Rename(src, final); err != nil {
		return BlobInfo{}, fmt.Errorf("store: commit %s: %w", src, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(final)); err != nil {
		return BlobInfo{}, fmt.Errorf("store: commit %s: %w", src, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(src)); err != nil {
		return BlobInfo{}, fmt.Errorf("store: commit %s: %w", src, err)
	}
	s.step("commit:renamed")
	// The seal's chmod moves the file's ctime: a follower in this process
	// holding it open must still find this process's record of it.
	sealing := s.sealingHashed(src)
	sealed, err := s.sealStamp(final, s.blobStampPath(sumHex), stamp{SHA256: sumHex})
	sealing(sealed, err == nil)
	if err != nil {
		return BlobInfo{}, err
	}
	s.step("commit:sealed")
	s.removeIngest(src)
	s.log.Debug("store: committed", "digest", info.SHA256, "size", n, "expected", exp)
	return info, nil
}

func (s *Store) writeAlias(exp digest.Digest, sha256Hex string) error {
	if exp.Algorithm == digest.SHA256 {
		return nil
	}
	p := s.aliasPath(exp)
	if b, err := ReadCapped(p, 256); err == nil && strings.TrimSpace(string(b)) == sha256Hex {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("store: alias %s: %w", exp, err)
	}
	if err := atomicfile.WriteFile(p, []byte(sha256Hex+"\n"), 0o644); err != nil {
		return fmt.Errorf("store: alias %s: %w", exp, err)
	}
	return nil
}

// removeIngest removes an ingest file and its sidecar; failure only leaves
// garbage for GC.
func (s *Store) removeIngest(path string) {
	for _, p := range []string{path, path + ".meta"} {
		if err := os.Remove(p); err != nil && !notExist(err) {
			s.log.Warn("store: cannot remove ingest file", "path", p, "err", err)
		}
	}
}

// hashBufSize is the read size for hashing: large enough for sequential
// throughput, small enough to check ctx often.
const hashBufSize = 1 << 20

// hashReader returns the SHA-256 hex of r's content, the digest in extra
// (if set) and the byte count, checking ctx between reads.
func (s *Store) hashReader(ctx context.Context, r io.Reader, extra digest.Algorithm) (string, digest.Digest, int64, error) {
	h256, _ := digest.SHA256.New()
	var hx hash.Hash
	if extra != "" {
		var err error
		if hx, err = extra.New(); err != nil {
			return "", digest.Digest{}, 0, err
		}
	}
	buf := make([]byte, hashBufSize)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return "", digest.Digest{}, n, err
		}
		m, err := r.Read(buf)
		if m > 0 {
			h256.Write(buf[:m])
			if hx != nil {
				hx.Write(buf[:m])
			}
			n += int64(m)
			s.hashedBytes.Add(int64(m))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", digest.Digest{}, n, err
		}
	}
	var xd digest.Digest
	if hx != nil {
		xd = digest.FromHash(extra, hx)
	}
	return digest.FromHash(digest.SHA256, h256).Hex, xd, n, nil
}

func (s *Store) hashPath(ctx context.Context, path string, extra digest.Algorithm) (string, digest.Digest, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", digest.Digest{}, 0, err
	}
	defer f.Close()
	return s.hashReader(ctx, f, extra)
}

// quarantineNote is written beside a quarantined file as <name>.note.json.
type quarantineNote struct {
	Original     string    `json:"original"`
	Reason       string    `json:"reason"`
	Expected     string    `json:"expected,omitempty"`
	Actual       string    `json:"actual,omitempty"`
	ExpectedSize int64     `json:"expected_size,omitempty"`
	ActualSize   int64     `json:"actual_size,omitempty"`
	At           time.Time `json:"at"`
}

// quarantine moves path into quarantine/ with a note of why and when. If it
// cannot be moved it is deleted, so that bad content is never used.
func (s *Store) quarantine(path string, note quarantineNote) (string, error) {
	note.Original = path
	note.At = time.Now().UTC()
	dst := s.path(dirQuarantine, note.At.Format("20060102T150405.000000000Z")+"-"+filepath.Base(path))
	if err := os.Rename(path, dst); err != nil {
		if notExist(err) {
			return "", fmt.Errorf("store: quarantine %s: %w", path, err)
		}
		if rerr := os.Remove(path); rerr != nil && !notExist(rerr) {
			return "", fmt.Errorf("store: quarantine %s: cannot move (%v) nor remove: %w", path, err, rerr)
		}
		s.log.Warn("store: bad file removed", "path", path, "reason", note.Reason, "move_err", err)
		return "", nil
	}
	_ = atomicfile.SyncDir(filepath.Dir(path))
	_ = atomicfile.SyncDir(filepath.Dir(dst))
	b, _ := json.MarshalIndent(note, "", "  ")
	if err := atomicfile.WriteFile(dst+".note.json", append(b, '\n'), 0o644); err != nil {
		s.log.Warn("store: cannot write quarantine note", "path", dst, "err", err)
	}
	s.log.Warn("store: quarantined", "path", path, "to", dst, "reason", note.Reason,
		"expected", note.Expected, "actual", note.Actual)
	return dst, nil
}

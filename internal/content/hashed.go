package content

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/vmprep/vmprep/pkg/digest"
)

// hashedFiles is this process's memory of ingest files that code in this
// process hashed in full, so that Commit, called later in the same process
// (the single binary, or `vmprep serve` running the fetcher and the
// verifier together), publishes them by rename instead of reading every
// byte a second time.
//
// Trust: a record is made only by a Go call (Store.RecordHashed) from code
// in this process that read or wrote every byte itself — the download engine
// hashing what it writes. Nothing outside the process can make one: it lives
// in this Store's memory, is never loaded from disk nor from a message, and
// a verdict a stage hears from another process (a NATS event saying
// "fetched, digest D") is not one. A record holds only for the exact file it
// was taken of: same path, inode, device, size, mtime and ctime; any write
// or replacement after it changes the stat, and Commit then hashes as
// before.
type hashedFiles struct {
	mu      sync.Mutex
	m       map[string]hashedFile // by absolute ingest path
	writing map[string]int        // ingest paths a hasher in this process is writing
}

type hashedFile struct {
	st       stamp         // statStamp of the file when it was hashed, device included
	sealed   stamp         // and once Commit published and sealed it (zero before)
	sha256   string        // hex SHA-256 of its content
	expected digest.Digest // the digest it was checked against (SHA-256 or SHA-512)
}

// maxHashedFiles bounds the memory. Records stay after their file is
// committed (a follower may ask about the file it holds open after the
// rename; a record names one inode and ctime, so it never matches a later
// file at the same path), and are pushed out when the table is full.
const maxHashedFiles = 256

// RecordHashed tells the store that this process has just hashed the whole
// ingest file at path, as fi (its stat taken after the last write and
// fsync) describes it, and found sha256 and, checked against, expected.
// A later Commit of that file in this process publishes it without
// re-reading it if the file's stat still matches fi exactly. Only code that
// hashed the bytes itself may call it: never on the word of another process.
func (s *Store) RecordHashed(path string, fi os.FileInfo, sha256, expected digest.Digest) error {
	if sha256.Algorithm != digest.SHA256 {
		return fmt.Errorf("store: record hashed %s: %s is not a SHA-256 digest", path, sha256)
	}
	exp, err := normalize(expected)
	if err != nil {
		return err
	}
	if exp.Algorithm == digest.SHA256 && exp.Hex != sha256.Hex {
		return fmt.Errorf("store: record hashed %s: sha256 %s is not the expected %s", path, sha256, exp)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("store: record hashed %q: %w", path, err)
	}
	if filepath.Dir(abs) != s.path(dirIngest) || fi == nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("store: record hashed %s: %w: not a regular file directly in %s", abs, ErrInvalidName, s.path(dirIngest))
	}
	h := &s.hashed
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[string]hashedFile{}
	}
	if _, ok := h.m[abs]; !ok && len(h.m) >= maxHashedFiles {
		for k := range h.m { // any one: they are all shortcuts, none is needed
			delete(h.m, k)
			break
		}
	}
	h.m[abs] = hashedFile{st: statStamp(fi), sha256: sha256.Hex, expected: exp}
	return nil
}

// sealingHashed is called by Commit before it seals the ingest file at abs
// (its chmod moves the ctime), and the function it returns after, with the
// sealed file's stamp: a follower in this process holding the file open then
// finds the record under either stat, and while the seal runs it waits
// (HashingNow) instead of giving up on a stat that is neither.
func (s *Store) sealingHashed(abs string) (done func(st stamp, ok bool)) {
	h := &s.hashed
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.m[abs]; !ok {
		return func(stamp, bool) {}
	}
	if h.writing == nil {
		h.writing = map[string]int{}
	}
	h.writing[abs]++
	return func(st stamp, ok bool) {
		h.mu.Lock()
		defer h.mu.Unlock()
		// The same inode, verified by Commit (on the record or by hashing it).
		if rec, found := h.m[abs]; ok && found && rec.st.Inode == st.Inode && rec.sha256 == st.SHA256 {
			rec.sealed = st
			h.m[abs] = rec
		}
		if h.writing[abs]--; h.writing[abs] <= 0 {
			delete(h.writing, abs)
		}
	}
}

// HashingHere marks the ingest file at path as being written by a hasher in
// this process (the download engine) until done is called; then a follower
// of the file in this process may wait for the hasher's record instead of
// hashing the file a second time (see HashedHere).
func (s *Store) HashingHere(path string) (done func()) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return func() {}
	}
	h := &s.hashed
	h.mu.Lock()
	if h.writing == nil {
		h.writing = map[string]int{}
	}
	h.writing[abs]++
	h.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			h.mu.Lock()
			if h.writing[abs]--; h.writing[abs] <= 0 {
				delete(h.writing, abs)
			}
			h.mu.Unlock()
		})
	}
}

// HashedHere reports whether code in this process is hashing the ingest
// file at path as it writes it (HashingHere), or has recorded it hashed
// (RecordHashed): then Hashed will, or already does, vouch for it.
func (s *Store) HashedHere(path string) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	h := &s.hashed
	h.mu.Lock()
	defer h.mu.Unlock()
	_, recorded := h.m[abs]
	return recorded || h.writing[abs] > 0
}

// HashingNow reports whether a hasher in this process is writing the
// ingest file at path (between HashingHere and its done).
func (s *Store) HashingNow(path string) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	h := &s.hashed
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.writing[abs] > 0
}

// Hashed reports whether this process recorded the ingest file at path, as
// fi (stat-ed by the caller on its open descriptor) describes it now, as
// hashed and checked against expected; if so it returns its SHA-256 hex.
func (s *Store) Hashed(path string, fi os.FileInfo, expected digest.Digest) (string, bool) {
	exp, err := normalize(expected)
	if err != nil || fi == nil || !stampTracksChange {
		// Without inode and ctime a stat cannot tell a rewrite of the same
		// size within one mtime tick: hash.
		return "", false
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", false
	}
	h := &s.hashed
	h.mu.Lock()
	rec, ok := h.m[abs]
	h.mu.Unlock()
	if !ok {
		return "", false
	}
	now := statStamp(fi)
	// The ctime only moves forward: once sealed, the stat of before the
	// seal cannot come back.
	same := func(st stamp) bool { return st.Inode != 0 && st.sameFile(now) && st.Device == now.Device }
	if rec.expected != exp || !(same(rec.st) || same(rec.sealed)) {
		return "", false
	}
	return rec.sha256, true
}

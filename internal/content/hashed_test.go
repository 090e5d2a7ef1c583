package content

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/digest"
)

// TestCommitTakesThisProcessHash: a file this process recorded as hashed is
// committed without reading it, and only while its stat is the one recorded;
// a file changed or replaced after the record is hashed, and a forgery
// caught.
func TestCommitTakesThisProcessHash(t *testing.T) {
	data := testutil.Fill("hashed", 1<<20)
	forged := testutil.Fill("forged", 1<<20)
	sha256Of, sha512Of := testutil.SHA256Of(data), testutil.SHA512Of(data)
	tests := []struct {
		name     string
		expected digest.Digest
		record   bool
		recorded digest.Digest // expected digest named in the record (default: expected)
		after    func(t *testing.T, path string)
		wantRead bool
		wantErr  error
	}{
		{name: "recorded, unchanged", expected: sha256Of, record: true},
		{name: "recorded against sha512, unchanged", expected: sha512Of, record: true},
		{name: "no record", expected: sha256Of, wantRead: true},
		{name: "recorded for another digest", expected: sha512Of, record: true, recorded: sha256Of, wantRead: true},
		{name: "rewritten in place after the record", expected: sha256Of, record: true, wantRead: true, wantErr: ErrDigestMismatch,
			after: func(t *testing.T, path string) {
				if err := os.WriteFile(path, forged, 0o644); err != nil {
					t.Fatal(err)
				}
				// Within one mtime tick a same-size rewrite may keep the
				// mtime; a forger may set it back too. Make the test
				// independent of the clock: another mtime (ctime moves too).
				old := time.Now().Add(-time.Hour)
				if err := os.Chtimes(path, old, old); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "replaced after the record", expected: sha256Of, record: true, wantRead: true, wantErr: ErrDigestMismatch,
			after: func(t *testing.T, path string) {
				tmp := path + ".forged"
				if err := os.WriteFile(tmp, forged, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, path); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "grown after the record", expected: sha256Of, record: true, wantRead: true, wantErr: ErrSizeMismatch,
			after: func(t *testing.T, path string) {
				f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if _, err := f.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := newStore(t)
			path := ingest(t, s, tt.expected, data)
			if tt.record {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				recorded := tt.recorded
				if recorded.IsZero() {
					recorded = tt.expected
				}
				if err := s.RecordHashed(path, fi, sha256Of, recorded); err != nil {
					t.Fatal(err)
				}
			}
			if tt.after != nil {
				tt.after(t, path)
			}
			before := s.hashedBytes.Load()
			info, err := s.Commit(ctx, path, tt.expected, int64(len(data)))
			read := s.hashedBytes.Load() - before
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Commit = %v, want %v", err, tt.wantErr)
				}
			} else if err != nil || info.SHA256 != sha256Of {
				t.Fatalf("Commit = %+v, %v; want blob %s", info, err, sha256Of)
			}
			if got := read > 0; got != tt.wantRead && tt.wantErr != ErrSizeMismatch {
				t.Errorf("Commit read %d bytes; want reading: %v", read, tt.wantRead)
			}
			if tt.wantErr == nil {
				if _, err := s.Lookup(ctx, tt.expected); err != nil {
					t.Errorf("Lookup after commit: %v", err)
				}
			}
		})
	}
}

// TestRecordHashedRefusesWhatItCannotHold: a record names a regular file in
// this store's ingest area and a SHA-256 that matches a SHA-256 expectation.
func TestRecordHashedRefusesWhatItCannotHold(t *testing.T) {
	s := newStore(t)
	data := testutil.Fill("refuse", 4<<10)
	d := testutil.SHA256Of(data)
	path := ingest(t, s, d, data)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir() + "/file"
	if err := os.WriteFile(outside, data, 0o644); err != nil {
		t.Fatal(err)
	}
	ofi, err := os.Stat(outside)
	if err != nil {
		t.Fatal(err)
	}
	other := testutil.SHA256Of([]byte("other"))
	tests := []struct {
		name   string
		path   string
		fi     os.FileInfo
		sha256 digest.Digest
		exp    digest.Digest
	}{
		{"outside the ingest area", outside, ofi, d, d},
		{"no stat", path, nil, d, d},
		{"sha256 differs from the expected sha256", path, fi, other, d},
		{"not a sha256", path, fi, testutil.SHA512Of(data), d},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.RecordHashed(tt.path, tt.fi, tt.sha256, tt.exp); err == nil {
				t.Errorf("RecordHashed accepted it")
			}
		})
	}
}

// TestHashedFollowsTheCommittedFile: a follower in this process holding
// the ingest file open still finds the record after Commit renamed and
// sealed it (the seal's chmod moves the ctime), and only for that file.
func TestHashedFollowsTheCommittedFile(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	data := testutil.Fill("follows", 256<<10)
	d := testutil.SHA256Of(data)
	path := ingest(t, s, d, data)
	held, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	fi, err := held.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RecordHashed(path, fi, d, d); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, path, d, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	now, err := held.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if now.Mode().Perm() == fi.Mode().Perm() {
		t.Fatalf("the commit did not seal the file (mode %v): the test shows nothing", now.Mode())
	}
	if _, ok := s.Hashed(path, now, d); !ok {
		t.Errorf("Hashed of the committed file held open: no record")
	}
	if _, ok := s.Hashed(path, fi, d); !ok {
		t.Errorf("Hashed with the stat taken before the seal: no record")
	}
	// A write to the published file afterwards matches neither stat.
	overwriteByte(t, s.blobPath(d.Hex), 7)
	old := time.Now().Add(-time.Hour) // another mtime whatever the clock's tick
	if err := os.Chtimes(s.blobPath(d.Hex), old, old); err != nil {
		t.Fatal(err)
	}
	if forged, err := held.Stat(); err != nil {
		t.Fatal(err)
	} else if _, ok := s.Hashed(path, forged, d); ok {
		t.Errorf("Hashed of the file written after its commit: the record was taken")
	}
	// Another file at the ingest path later is not the one recorded.
	other := ingest(t, s, d, data)
	ofi, err := os.Stat(other)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Hashed(other, ofi, d); ok {
		t.Errorf("Hashed of a new file at the same path: the old record was taken")
	}
}

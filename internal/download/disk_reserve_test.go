//go:build linux || darwin

package download

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmprep/vmprep/internal/testutil"
)

// TestReserveContiguousFirst: the order of F_PREALLOCATE attempts on macOS
// and which of their errors fail a download (the Linux path shares the latter).
func TestReserveContiguousFirst(t *testing.T) {
	tests := []struct {
		name         string
		length       int64
		contiguous   error // attempt(true)'s answer
		pieces       error // attempt(false)'s answer
		wantAttempts []bool
		wantErr      error
	}{
		{"nothing to reserve", 0, nil, nil, nil, nil},
		{"contiguous", 1 << 20, nil, unix.EIO, []bool{true}, nil},
		{"fragmented volume", 1 << 20, unix.ENOSPC, nil, []bool{true, false}, nil},
		{"disk full", 1 << 20, unix.ENOSPC, unix.ENOSPC, []bool{true, false}, unix.ENOSPC},
		{"quota", 1 << 20, unix.ENOSPC, unix.EDQUOT, []bool{true, false}, unix.EDQUOT},
		{"file too large", 1 << 20, unix.EFBIG, &os.PathError{Op: "fcntl", Path: "x", Err: unix.EFBIG}, []bool{true, false}, unix.EFBIG},
		{"file system cannot reserve", 1 << 20, unix.ENOTSUP, unix.ENOTSUP, []bool{true, false}, nil},
		{"unknown command", 1 << 20, unix.EINVAL, unix.EINVAL, []bool{true, false}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var attempts []bool
			err := reserveContiguousFirst(tc.length, func(contiguous bool) error {
				attempts = append(attempts, contiguous)
				if contiguous {
					return tc.contiguous
				}
				return tc.pieces
			})
			if !errors.Is(err, tc.wantErr) || (err != nil) != (tc.wantErr != nil) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(attempts, tc.wantAttempts) {
				t.Errorf("attempts (contiguous?) = %v, want %v", attempts, tc.wantAttempts)
			}
		})
	}
}

// TestPreallocate on a small real file system: a reservation that fits
// takes the blocks without changing the file's size (a resumed download
// goes by the size); one that does not fit fails at once.
func TestPreallocate(t *testing.T) {
	dir := testutil.MountLoopFS(t, "ext4") // 400 MiB
	f, err := os.Create(filepath.Join(dir, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	const fits = 64 << 20
	if err := preallocate(f, fits); err != nil {
		t.Fatalf("preallocate %d bytes: %v", fits, err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != int64(len("partial")) {
		t.Errorf("size after preallocate = %d, want %d (unchanged)", fi.Size(), len("partial"))
	}
	if got := int64(fi.Sys().(*syscall.Stat_t).Blocks) * 512; got < fits {
		t.Errorf("allocated %d bytes after preallocate, want ≥ %d", got, fits)
	}
	if err := preallocate(f, 2<<30); !errors.Is(err, unix.ENOSPC) && !errors.Is(err, unix.EFBIG) {
		t.Errorf("preallocate 2 GiB on a 400 MiB file system = %v, want ENOSPC or EFBIG", err)
	}
}

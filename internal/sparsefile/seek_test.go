//go:build linux || darwin || freebsd

package sparsefile

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

type region struct{ Start, End int64 }

// layout is a file of fileSize bytes whose data lies in extents (sorted,
// apart); seek answers as lseek does on a file system that tracks holes.
type layout struct {
	fileSize int64
	extents  []region
}

func (l layout) seek(off int64, data bool) (int64, error) {
	if off >= l.fileSize {
		return 0, unix.ENXIO
	}
	for _, e := range l.extents {
		if e.End <= off {
			continue
		}
		if data {
			return max(off, e.Start), nil
		}
		if off >= e.Start {
			return e.End, nil
		}
		return off, nil
	}
	if data {
		return 0, unix.ENXIO
	}
	return l.fileSize, nil // the virtual hole at the end of the file
}

// failing answers err to every query.
func failing(err error) seekFunc {
	return func(int64, bool) (int64, error) { return 0, err }
}

func collect(t *testing.T, size int64, seek seekFunc) ([]region, error) {
	t.Helper()
	var got []region
	err := walk(size, seek, func(start, end int64) error {
		got = append(got, region{start, end})
		return nil
	})
	return got, err
}

func TestWalk(t *testing.T) {
	sparse := layout{fileSize: 100, extents: []region{{10, 20}, {50, 60}, {90, 100}}}
	tests := []struct {
		name    string
		size    int64
		seek    seekFunc
		want    []region
		wantErr error
	}{
		{"dense", 100, layout{100, []region{{0, 100}}}.seek, []region{{0, 100}}, nil},
		{"holes skipped", 100, sparse.seek, []region{{10, 20}, {50, 60}, {90, 100}}, nil},
		{"all hole", 100, layout{fileSize: 100}.seek, nil, nil},
		{"empty", 0, sparse.seek, nil, nil},
		{"file longer than size: cut", 55, sparse.seek, []region{{10, 20}, {50, 55}}, nil},
		{"file shorter than size: the tail is a hole", 200, sparse.seek, []region{{10, 20}, {50, 60}, {90, 100}}, nil},
		// How file systems say they cannot find holes: the whole file.
		{"EINVAL", 100, failing(unix.EINVAL), []region{{0, 100}}, nil},
		{"EOPNOTSUPP", 100, failing(unix.EOPNOTSUPP), []region{{0, 100}}, nil},
		{"ENOTSUP", 100, failing(unix.ENOTSUP), []region{{0, 100}}, nil},
		{"ENOTTY as os.File.Seek wraps it", 100,
			failing(&os.PathError{Op: "seek", Path: "disk.raw", Err: unix.ENOTTY}), []region{{0, 100}}, nil},
		{"I/O error", 100, failing(unix.EIO), nil, unix.EIO},
		// A confused file system must not make the walk loop or go back.
		{"SEEK_DATA goes back", 100, func(off int64, data bool) (int64, error) {
			if !data || off == 0 {
				return sparse.seek(off, data)
			}
			return 0, nil
		}, []region{{10, 20}, {20, 100}}, nil},
		{"SEEK_HOLE does not move", 100, func(off int64, data bool) (int64, error) {
			if data {
				return sparse.seek(off, data)
			}
			return off, nil
		}, []region{{10, 100}}, nil},
		{"SEEK_HOLE fails", 100, func(off int64, data bool) (int64, error) {
			if data {
				return sparse.seek(off, data)
			}
			return 0, unix.EIO
		}, nil, unix.EIO},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := collect(t, tc.size, tc.seek)
			if !errors.Is(err, tc.wantErr) || (err != nil) != (tc.wantErr != nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("regions = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestWalkStopsOnYieldError(t *testing.T) {
	stop := errors.New("stop")
	calls := 0
	err := walk(100, layout{fileSize: 100, extents: []region{{10, 20}, {50, 60}}}.seek, func(start, end int64) error {
		calls++
		return stop
	})
	if err != stop || calls != 1 {
		t.Errorf("walk = %v after %d calls, want the yield's error after 1", err, calls)
	}
}

// TestDataRegionsRealFile: on the file system of the test's temporary
// directory, every written byte lies in a region, and the regions are
// ordered, apart and inside the size asked for.
func TestDataRegionsRealFile(t *testing.T) {
	const size = 64 << 20
	written := []region{{0, 100}, {8 << 20, 8<<20 + 5000}, {40 << 20, 41 << 20}, {size - 7, size}}
	f, err := os.Create(filepath.Join(t.TempDir(), "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, w := range written {
		b := make([]byte, w.End-w.Start)
		for i := range b {
			b[i] = 0xa5
		}
		if _, err := f.WriteAt(b, w.Start); err != nil {
			t.Fatal(err)
		}
	}
	var got []region
	if err := DataRegions(f, size, func(start, end int64) error {
		got = append(got, region{start, end})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i, r := range got {
		if r.Start >= r.End || r.Start < 0 || r.End > size || (i > 0 && r.Start < got[i-1].End) {
			t.Fatalf("regions %v: region %d is empty, out of the file or out of order", got, i)
		}
	}
	for _, w := range written {
		covered := false
		for _, r := range got {
			covered = covered || (r.Start <= w.Start && w.End <= r.End)
		}
		if !covered {
			t.Errorf("written %v is in no region of %v", w, got)
		}
	}
	t.Logf("regions: %v", got)
}

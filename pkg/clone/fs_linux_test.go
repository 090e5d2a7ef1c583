package clone

import (
	"encoding/binary"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmprep/vmprep/internal/testutil"
)

func mountFS(t *testing.T, kind string) string { return testutil.MountLoopFS(t, kind) }

// sharedBytes returns how many bytes of path's extents the file system
// reports as shared with another file (FS_IOC_FIEMAP, FIEMAP_EXTENT_SHARED).
func sharedBytes(t *testing.T, path string) (shared, mapped int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const (
		fsIocFiemap   = 0xC020660B
		extentShared  = 0x2000
		extentLast    = 0x1
		hdrLen, extSz = 32, 56
		batch         = 256
	)
	buf := make([]byte, hdrLen+batch*extSz)
	le := binary.LittleEndian
	for start := uint64(0); ; {
		clear(buf)
		le.PutUint64(buf[0:], start)
		le.PutUint64(buf[8:], ^uint64(0)-start)
		le.PutUint32(buf[16:], 1) // FIEMAP_FLAG_SYNC
		le.PutUint32(buf[24:], batch)
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
			t.Fatalf("FIEMAP %s: %v", path, e)
		}
		n := le.Uint32(buf[20:])
		if n == 0 {
			return shared, mapped
		}
		for i := range n {
			e := buf[hdrLen+int(i)*extSz:]
			logical, length, flags := le.Uint64(e[0:]), le.Uint64(e[16:]), le.Uint32(e[40:])
			mapped += int64(length)
			if flags&extentShared != 0 {
				shared += int64(length)
			}
			start = logical + length
			if flags&extentLast != 0 {
				return shared, mapped
			}
		}
	}
}

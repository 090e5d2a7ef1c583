//go:build unix

package content

import (
	"os"
	"syscall"
)

// AllocatedSize is how much disk space fi's file takes: less than its size
// for a sparse file (a raw disk's holes take none), a little more for a
// dense one (whole blocks).
func AllocatedSize(fi os.FileInfo) int64 {
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int64(sys.Blocks) * 512 // st_blocks counts 512-byte units whatever the block size
	}
	return fi.Size()
}

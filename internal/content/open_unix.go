//go:build unix

package content

import (
	"os"
	"syscall"
)

// openSmall opens a store-owned file (metadata, an ingest file) for reading without following
// a symlink (O_NOFOLLOW) and without blocking on a named pipe (O_NONBLOCK;
// harmless for regular files). The caller checks that it is a regular file.
func openSmall(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
}

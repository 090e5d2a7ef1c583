//go:build !linux

package clone

import "os"

// copyKernel: no in-kernel range copy here (macOS has clonefile, tried
// first, but no copy_file_range); the caller reads and writes.
func copyKernel(dst, src *os.File, off, n int64) (bool, error) { return false, nil }

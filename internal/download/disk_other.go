//go:build !linux

package download

import "os"

// preallocate is a no-op where fallocate is unavailable.
func preallocate(*os.File, int64) error { return nil }

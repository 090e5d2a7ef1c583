//go:build !linux && !darwin

package download

import "os"

// preallocate is a no-op where neither fallocate nor F_PREALLOCATE exists.
func preallocate(*os.File, int64) error { return nil }

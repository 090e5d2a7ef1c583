//go:build !linux

package writeback

import "os"

// Range does nothing where the system has no asynchronous writeback call
// (an fsync or fdatasync here would block until the data is on disk, which
// is the final fsync's job, not a hint's).
func Range(*os.File, int64, int64) error { return nil }

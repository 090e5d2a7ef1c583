//go:build !linux

package download

import "os"

// startWriteback is a no-op where sync_file_range is unavailable; the final fsync does all the work.
func startWriteback(*os.File, int64, int64) {}

// preallocate is a no-op where fallocate is unavailable.
func preallocate(*os.File, int64) error { return nil }

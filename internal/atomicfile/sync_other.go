//go:build !darwin

package atomicfile

import "os"

// Sync makes f's data and metadata durable: fsync (os.File.Sync) here. It
// is what every publish path of vmprep calls; see sync_darwin.go for why.
func Sync(f *os.File) error { return f.Sync() }

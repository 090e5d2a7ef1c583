//go:build !unix

package content

import "os"

// AllocatedSize is fi's size where the platform does not say how much disk
// space a file takes.
func AllocatedSize(fi os.FileInfo) int64 { return fi.Size() }

//go:build !linux

package content

import "os"

// platformStamp: elsewhere the stamp is size and mtime only (weaker: a write
// that restores mtime goes unnoticed until Verify).
func platformStamp(fi os.FileInfo, st *stamp) {}

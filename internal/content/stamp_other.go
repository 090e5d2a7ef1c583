//go:build !linux && !darwin

package content

import "os"

// stampTracksChange: the stamp is size and mtime only here (weaker: a write
// that restores mtime goes unnoticed until Verify).
const stampTracksChange = false

func platformStamp(fi os.FileInfo, st *stamp) {}

package store

import (
	"os"
	"syscall"
)

// stampTracksChange: the stamp holds inode and ctime here.
const stampTracksChange = true

// platformStamp: as on Linux. APFS never reuses a file id within a volume,
// so a replaced file always has another inode; a birth time would add
// nothing to that. st_dev is a signed 32-bit number here, taken as its
// unsigned bits so that the record never holds a sign-extended value.
func platformStamp(fi os.FileInfo, st *stamp) {
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.Inode = sys.Ino
		st.Device = uint64(uint32(sys.Dev))
		st.ChangeTimeNs = sys.Ctimespec.Nano()
	}
}

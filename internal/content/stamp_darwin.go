package content

import "syscall"

// deviceAndCtime: st_dev is a signed 32-bit number here, taken as its
// unsigned bits so that a record never holds a sign-extended value. (No
// birth time in the stamp: APFS never reuses a file id within a volume, so
// a replaced file always has another inode.)
func deviceAndCtime(sys *syscall.Stat_t) (uint64, int64) {
	return uint64(uint32(sys.Dev)), sys.Ctimespec.Nano()
}

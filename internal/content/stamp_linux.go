package content

import "syscall"

func deviceAndCtime(sys *syscall.Stat_t) (uint64, int64) {
	return uint64(sys.Dev), sys.Ctim.Nano() // Dev is uint32 on some 32-bit platforms
}

//go:build linux

package content

import (
	"os"
	"syscall"
)

func platformStamp(fi os.FileInfo, st *stamp) {
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.Inode = sys.Ino
		st.Device = uint64(sys.Dev)
		st.ChangeTimeNs = sys.Ctim.Nano()
	}
}

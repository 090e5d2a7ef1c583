//go:build linux || darwin

package content

import (
	"os"
	"syscall"
)

// stampTracksChange: the stamp holds inode and ctime here.
const stampTracksChange = true

func platformStamp(fi os.FileInfo, st *stamp) {
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.Inode = sys.Ino
		st.Device, st.ChangeTimeNs = deviceAndCtime(sys)
	}
}

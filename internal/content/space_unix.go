//go:build darwin || freebsd

package content

import "syscall"

// diskSpace: on the BSDs f_bsize is the fundamental block size that
// f_bavail and f_blocks count.
func diskSpace(dir string) (avail, total int64, err error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, 0, err
	}
	return capBytes(uint64(fs.Bavail), uint64(fs.Bsize)), capBytes(uint64(fs.Blocks), uint64(fs.Bsize)), nil
}

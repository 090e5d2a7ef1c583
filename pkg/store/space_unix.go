//go:build darwin || freebsd

package store

import "syscall"

// availableBytes: on the BSDs f_bsize is the fundamental block size that
// f_bavail counts.
func availableBytes(dir string) (int64, error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, err
	}
	return capBytes(uint64(fs.Bavail), uint64(fs.Bsize)), nil
}

//go:build linux || darwin || freebsd

package store

import "syscall"

func availableBytes(dir string) (int64, error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, err
	}
	avail := uint64(fs.Bavail) * uint64(fs.Bsize)
	if avail > 1<<62 {
		avail = 1 << 62
	}
	return int64(avail), nil
}

//go:build linux

package content

import "syscall"

// diskSpace: f_bavail and f_blocks count fragments of f_frsize bytes.
// f_bsize is only the preferred I/O size, which differs on some file systems
// (NFS, FUSE), so multiplying by it misreports space.
func diskSpace(dir string) (avail, total int64, err error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, 0, err
	}
	unit := uint64(fs.Frsize)
	if unit == 0 { // kernels before 2.6 did not fill it
		unit = uint64(fs.Bsize)
	}
	return capBytes(uint64(fs.Bavail), unit), capBytes(uint64(fs.Blocks), unit), nil
}

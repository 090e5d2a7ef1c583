//go:build !(linux || darwin || freebsd)

package store

func diskSpace(dir string) (avail, total int64, err error) { return 0, 0, errSpaceUnknown }

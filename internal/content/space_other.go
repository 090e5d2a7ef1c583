//go:build !(linux || darwin || freebsd)

package content

func diskSpace(dir string) (avail, total int64, err error) { return 0, 0, errSpaceUnknown }

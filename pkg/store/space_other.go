//go:build !(linux || darwin || freebsd)

package store

func availableBytes(dir string) (int64, error) { return 0, errSpaceUnknown }

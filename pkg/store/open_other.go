//go:build !unix

package store

import (
	"fmt"
	"os"
)

// openSmall opens a store-owned metadata file, refusing anything that is not
// a regular file (checked before opening: there is no O_NOFOLLOW here).
func openSmall(path string) (*os.File, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	return os.Open(path)
}

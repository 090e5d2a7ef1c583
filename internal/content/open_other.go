//go:build !unix

package content

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
		return nil, fmt.Errorf("%s: a %s, not a regular file", path, fileKind(fi.Mode()))
	}
	return os.Open(path)
}

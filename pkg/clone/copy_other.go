//go:build !unix

package clone

import (
	"context"
	"io"
	"os"
)

// sparseCopy on platforms without SEEK_DATA: a plain copy.
func sparseCopy(ctx context.Context, dst, src *os.File, progress func(done, total int64)) error {
	_, err := io.Copy(dst, src)
	return err
}

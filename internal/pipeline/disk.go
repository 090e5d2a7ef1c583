package pipeline

import (
	"fmt"

	"github.com/vmprep/vmprep/internal/qcow2"
	"github.com/vmprep/vmprep/pkg/image"
)

// checkDeclaredFormat refuses a disk declared qcow2 whose bytes are not a
// qcow2 image we accept (a broken magic, another format, a malformed header
// or tables, a backing file): passing it on as a qcow2 disk — or converting
// it as raw — would hand a VM something other than what was published.
// Opening reads the header and the L1, refcount and snapshot tables, a few
// KiB for a cloud image.
func checkDeclaredFormat(path string, a image.Asset) error {
	if a.Format != image.FormatQCOW2 {
		return nil
	}
	img, err := qcow2.OpenFile(path)
	if err != nil {
		return fmt.Errorf("disk %s from %s is declared qcow2: %w", a.Name, a.URL, err)
	}
	return img.Close()
}

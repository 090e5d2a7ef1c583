package download

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/pkg/digest"
)

// SidecarSuffix is appended to Request.Dest to name the resume sidecar.
const SidecarSuffix = ".meta"

// maxSidecarSize bounds how much of a sidecar we read: it is a few hundred bytes.
const maxSidecarSize = 64 << 10

// sidecar records what a partial file is a prefix of, so that a later
// process can resume it with a conditional range request.
type sidecar struct {
	URL          string        `json:"url"`
	ETag         string        `json:"etag,omitempty"`
	LastModified string        `json:"last_modified,omitempty"`
	Expected     digest.Digest `json:"expected,omitzero"`
	// Size is the full size of the file on the server, 0 if unknown.
	Size int64 `json:"size,omitempty"`
}

// SidecarPath returns the sidecar path for a destination.
func SidecarPath(dest string) string { return dest + SidecarSuffix }

// RemoveSidecar deletes the resume sidecar of dest. The caller calls it once
// it has committed (renamed) the downloaded file; a missing sidecar is not an error.
func RemoveSidecar(dest string) error {
	if err := os.Remove(SidecarPath(dest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove download sidecar: %w", err)
	}
	return nil
}

// readSidecar returns the sidecar of dest, or ok=false if it is missing or unreadable
// (an unreadable sidecar only costs a restart from zero).
func readSidecar(dest string) (sc sidecar, ok bool) {
	f, err := os.Open(SidecarPath(dest))
	if err != nil {
		return sidecar{}, false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSidecarSize+1))
	if err != nil || len(b) > maxSidecarSize {
		return sidecar{}, false
	}
	if err := json.Unmarshal(b, &sc); err != nil || sc.URL == "" || sc.Size < 0 {
		return sidecar{}, false
	}
	return sc, true
}

// writeSidecar replaces the sidecar atomically: temp file, fsync, rename, fsync dir.
func writeSidecar(dest string, sc sidecar) error {
	b, err := json.Marshal(sc)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(SidecarPath(dest), b, 0o600)
}

package messages

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/vmprep/vmprep/pkg/image"
)

// CloneRequest asks the target host's converter for a writable disk for one
// VM, made from the request's disk once it is on that host: a file in the
// clone directory that the host configures (converter --clone-dir). The
// request names only the file; the host decides where it is.
type CloneRequest struct {
	// Name is the clone's file name: a plain name (no directory, no "/"
	// or "\", not "." or "..", not hidden), at most MaxCloneNameLen bytes.
	Name string `json:"name"`
	// Format is the clone's: "raw" (a reflink or clonefile of a raw disk,
	// else a sparse copy) or "qcow2" (an overlay backed by the disk).
	// Empty: the request's disk format.
	Format image.DiskFormat `json:"format,omitempty"`
	// Size, if set, grows the clone's virtual size to this many bytes.
	Size int64 `json:"size,omitempty"`
	// Force replaces an existing file of that name, but only one the host
	// recorded as a clone: any other file is never overwritten.
	Force bool `json:"force,omitempty"`
}

// Clone is a clone the target host's converter made (see CloneRequest).
type Clone struct {
	Name string `json:"name"`
	// Path is the clone's absolute path on the result's host.
	Path string `json:"path"`
	// Method is how it was made: reflink, clonefile, overlay or copy.
	Method string           `json:"method"`
	Format image.DiskFormat `json:"format"`
}

// Limits of a request's clones.
const (
	MaxClones       = 32
	MaxCloneNameLen = 255
)

// ValidateCloneName checks that name is a plain file name: it can only
// name a file directly inside the directory it is joined to.
func ValidateCloneName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: clone name is empty", ErrInvalidRequest)
	case len(name) > MaxCloneNameLen:
		return fmt.Errorf("%w: clone name is %d bytes long (max %d)", ErrInvalidRequest, len(name), MaxCloneNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%w: clone name %q is not a file name", ErrInvalidRequest, name)
	case strings.ContainsAny(name, `/\`):
		return fmt.Errorf("%w: clone name %q has a path separator: name a file of the host's clone directory, not a path", ErrInvalidRequest, name)
	case name[0] == '.':
		// Hidden names are the temporaries of atomic writes (".name.tmp-…").
		return fmt.Errorf("%w: clone name %q starts with '.'", ErrInvalidRequest, name)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: clone name %q is not UTF-8", ErrInvalidRequest, name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: clone name %q has a control character", ErrInvalidRequest, name)
		}
	}
	return nil
}

// CloneFormat is the format of clone c of a request for a disk of format
// disk: c.Format, or the disk's.
func CloneFormat(c CloneRequest, disk image.DiskFormat) image.DiskFormat {
	if c.Format != "" {
		return c.Format
	}
	if disk == "" {
		return DefaultFormat
	}
	return disk
}

// validateClones checks the clones of request r (see CloneRequest).
func (r *PrepareRequest) validateClones() error {
	if len(r.Clones) == 0 {
		return nil
	}
	switch {
	case r.Target == "":
		return fmt.Errorf("%w: clones are made on the host that receives the files: name it as the target", ErrInvalidRequest)
	case r.ClientConverts:
		return fmt.Errorf("%w: clones are made by the target host's converter, not by a client that converts itself", ErrInvalidRequest)
	case len(r.Clones) > MaxClones:
		return fmt.Errorf("%w: %d clones asked (max %d)", ErrInvalidRequest, len(r.Clones), MaxClones)
	}
	seen := make(map[string]bool, len(r.Clones))
	for _, c := range r.Clones {
		if err := ValidateCloneName(c.Name); err != nil {
			return err
		}
		if seen[c.Name] {
			return fmt.Errorf("%w: clone name %q is asked twice", ErrInvalidRequest, c.Name)
		}
		seen[c.Name] = true
		switch CloneFormat(c, r.format()) {
		case image.FormatQCOW2:
		case image.FormatRaw:
			if r.format() != image.FormatRaw {
				return fmt.Errorf("%w: clone %s: a raw clone needs a raw disk (ask for format raw, or a qcow2 clone)", ErrInvalidRequest, c.Name)
			}
		default:
			return fmt.Errorf("%w: clone %s: format %q: want raw or qcow2", ErrInvalidRequest, c.Name, c.Format)
		}
		if c.Size < 0 {
			return fmt.Errorf("%w: clone %s: size %d is negative", ErrInvalidRequest, c.Name, c.Size)
		}
	}
	return nil
}

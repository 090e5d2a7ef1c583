// Package clone makes a writable disk for one VM from a prepared, read-only
// base in the cache, the cheapest way the file system allows:
//
//   - reflink (Linux FICLONE: XFS with reflink, btrfs, bcachefs) and
//     clonefile (macOS APFS) share the base's extents: constant time and no
//     space until the guest writes;
//   - overlay writes a small qcow2 whose backing file is the base, for QEMU
//     and Cloud Hypervisor;
//   - copy, where nothing else works, copies only the base's data (holes
//     stay holes) and says so; Options.RequireCOW makes it an error.
//
// DEST appears only complete (a temporary name in its directory, fsync,
// rename) and an existing DEST is kept unless Options.Force. The package
// knows nothing of the content store: recording which bases clones use, so
// that cache gc keeps them, is store.RecordUse's job.
package clone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/qcow2"
)

// Method says how a clone was made.
type Method string

// Methods.
const (
	MethodReflink   Method = "reflink"
	MethodClonefile Method = "clonefile"
	MethodOverlay   Method = "overlay"
	MethodCopy      Method = "copy"
)

// Shares reports whether a clone made this way depends on, or shares the
// blocks of, its base, so that the base is worth keeping while the clone
// lives. A copy is independent of its base.
func (m Method) Shares() bool { return m != MethodCopy && m != "" }

// Format of the clone.
type Format = qcow2.Format

// Formats a clone can have.
const (
	FormatRaw   = qcow2.FormatRaw
	FormatQcow2 = qcow2.FormatQcow2
)

// Options tune Clone. The zero value makes a raw clone of the base's size.
type Options struct {
	// Format is the clone's format: raw (a clone or copy of a raw base) or
	// qcow2 (an overlay over a raw or qcow2 base). Empty: raw.
	Format Format
	// Size, if larger than the base's virtual size, grows the clone to it;
	// a smaller one is an error (shrinking a disk loses the guest's data).
	Size int64
	// Force replaces an existing DEST.
	Force bool
	// RequireCOW refuses to fall back to a full copy.
	RequireCOW bool
	// Perm is DEST's mode (0: 0o644).
	Perm os.FileMode
	// Progress, if set, is called as a copy proceeds (done and total bytes
	// of the base's data); reflinks and overlays are instant.
	Progress func(done, total int64)
}

// Result describes a clone.
type Result struct {
	Method Method `json:"method"`
	// Path is DEST, absolute.
	Path   string `json:"path"`
	Format Format `json:"format"`
	// Size is the clone's virtual size in bytes.
	Size int64 `json:"size"`
	// Base is the absolute, symlink-free path of the base the clone was
	// made from (what an overlay names as its backing file).
	Base string `json:"base"`
}

// ErrNoCOW is returned (wrapped) when Options.RequireCOW is set and the file
// system cannot share extents between the base and DEST.
var ErrNoCOW = errors.New("the file system cannot clone (copy-on-write) here")

// ErrShrink is returned when Options.Size is smaller than the base.
var ErrShrink = errors.New("a clone cannot be smaller than its base")

// ErrExists is returned when DEST exists and Options.Force is not set.
var ErrExists = errors.New("destination exists (use Force to replace it)")

// errUnsupported is what the platform clone calls return when the file
// system (or the pair of them) cannot share extents: fall back to a copy.
var errUnsupported = errors.New("clone not supported")

// Clone makes a writable disk at dest from the base disk src.
func Clone(ctx context.Context, src, dest string, opts Options) (Result, error) {
	if opts.Format == "" {
		opts.Format = FormatRaw
	}
	if opts.Perm == 0 {
		opts.Perm = 0o644
	}
	if opts.Format != FormatRaw && opts.Format != FormatQcow2 {
		return Result{}, fmt.Errorf("clone %s: format %q: want raw or qcow2", dest, opts.Format)
	}
	if opts.Size < 0 {
		return Result{}, fmt.Errorf("clone %s: size %d is negative", dest, opts.Size)
	}
	// The base is named by its real path: an overlay must not follow a
	// link that may later point at another build.
	base, err := filepath.Abs(src)
	if err == nil {
		base, err = filepath.EvalSymlinks(base)
	}
	if err != nil {
		return Result{}, fmt.Errorf("clone: base %s: %w", src, err)
	}
	if dest, err = filepath.Abs(dest); err != nil {
		return Result{}, fmt.Errorf("clone %s: %w", dest, err)
	}
	if fi, err := os.Stat(base); err != nil {
		return Result{}, fmt.Errorf("clone: base %w", err)
	} else if !fi.Mode().IsRegular() {
		return Result{}, fmt.Errorf("clone: base %s is not a regular file", base)
	}
	if dfi, err := os.Stat(dest); err == nil {
		if !opts.Force {
			return Result{}, fmt.Errorf("clone %s: %w", dest, ErrExists)
		}
		if bfi, _ := os.Stat(base); os.SameFile(dfi, bfi) {
			return Result{}, fmt.Errorf("clone %s: that is the base itself", dest)
		}
	}
	baseFmt, virt, err := probe(base)
	if err != nil {
		return Result{}, err
	}
	size := max(virt, opts.Size)
	if opts.Size != 0 && opts.Size < virt {
		return Result{}, fmt.Errorf("clone %s: --size %d < base %s's %d bytes: %w", dest, opts.Size, base, virt, ErrShrink)
	}
	res := Result{Path: dest, Format: opts.Format, Size: size, Base: base}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	tmp := atomicfile.TempName(dest)
	switch {
	case opts.Format == FormatQcow2:
		res.Method = MethodOverlay
		res.Size = (size + 511) / 512 * 512 // QEMU's sectors, as the header says
		err = writeOverlay(tmp, qcow2.OverlaySpec{Backing: base, BackingFormat: baseFmt, VirtualSize: size})
	case baseFmt != FormatRaw:
		return res, fmt.Errorf("clone %s: base %s is %s: a raw clone needs a raw base (prepare --format raw), or ask for a qcow2 overlay", dest, base, baseFmt)
	default:
		if res.Method, err = cloneRaw(ctx, base, tmp, opts); err == nil && size > virt {
			if err = os.Truncate(tmp, size); err != nil {
				err = fmt.Errorf("grow to %d bytes: %w", size, err)
			}
		}
	}
	if err != nil {
		os.Remove(tmp)
		return res, fmt.Errorf("clone %s from %s: %w", dest, base, err)
	}
	if err := atomicfile.Publish(tmp, dest, opts.Perm, opts.Force); err != nil {
		if errors.Is(err, atomicfile.ErrExists) {
			return res, fmt.Errorf("clone %s: %w", dest, ErrExists)
		}
		return res, fmt.Errorf("clone: %w", err)
	}
	return res, nil
}

// writeOverlay writes a qcow2 overlay at tmp, which must not exist.
func writeOverlay(tmp string, spec qcow2.OverlaySpec) error {
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = qcow2.WriteOverlay(f, spec)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// probe returns the base's format (raw or qcow2) and virtual size.
func probe(base string) (Format, int64, error) {
	f, err := os.Open(base)
	if err != nil {
		return "", 0, fmt.Errorf("clone: base %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", 0, fmt.Errorf("clone: base %w", err)
	}
	format, err := qcow2.DetectFormat(f, fi.Size())
	if err != nil {
		return "", 0, fmt.Errorf("clone: base %s: %w", base, err)
	}
	switch format {
	case FormatRaw:
		return format, fi.Size(), nil
	case FormatQcow2:
		img, err := qcow2.OpenFile(base)
		if err != nil {
			return "", 0, fmt.Errorf("clone: base %s: %w", base, err)
		}
		defer img.Close()
		return format, img.Size(), nil
	}
	return "", 0, fmt.Errorf("clone: base %s is %s: want raw or qcow2", base, format)
}

// cloneRaw makes tmp (which must not exist) a copy of the raw base: shared
// extents if the platform can, else (unless RequireCOW) a sparse copy.
func cloneRaw(ctx context.Context, base, tmp string, opts Options) (Method, error) {
	m, err := cowClone(base, tmp)
	if err == nil {
		return m, nil
	}
	if !errors.Is(err, errUnsupported) {
		return "", err
	}
	if opts.RequireCOW {
		return "", fmt.Errorf("%w: %v", ErrNoCOW, err)
	}
	os.Remove(tmp) // a failed clone may have created it
	src, err := os.Open(base)
	if err != nil {
		return "", err
	}
	defer src.Close()
	dst, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	defer dst.Close()
	if err := sparseCopy(ctx, dst, src, opts.Progress); err != nil {
		return "", err
	}
	return MethodCopy, dst.Close()
}

// errShort is returned when the base shrank under a copy.
var errShort = io.ErrUnexpectedEOF

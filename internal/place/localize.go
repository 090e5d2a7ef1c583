package place

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// ErrNotObjects: the result's files are not in an object store (the
// deployment shares one cache directory); its paths are valid on res.Host.
var ErrNotObjects = errors.New("the result names files, not objects")

// Localize makes a prepared result's files local: each object is pulled
// into this placer's store (and verified there against the result's
// digest), a compressed kernel is unpacked, a qcow2 disk is converted to raw
// when res.Format asks for raw, and the images view is linked. The returned
// result names this host (host) and the local paths.
func (p *Placer) Localize(ctx context.Context, res messages.Result, host string) (messages.Result, error) {
	if res.Status != messages.ResultPrepared {
		return res, fmt.Errorf("request %s is %s, nothing to place", res.RequestID, res.Status)
	}
	for _, f := range res.Files {
		if f.Object == nil {
			return res, ErrNotObjects
		}
	}
	out := res
	out.Files = make(map[image.Role]messages.File, len(res.Files))
	out.Host, out.Kernel, out.Initramfs, out.Disk, out.View = host, "", "", "", ""
	for role, f := range res.Files {
		want := f.Digest
		if want.IsZero() {
			want = f.DerivedFrom
		}
		if want.IsZero() {
			return res, fmt.Errorf("%s: the result gives no digest to verify it by", role)
		}
		blob, err := p.Pull(ctx, role, want, f.Object.Size, f.Object)
		if err != nil {
			return res, fmt.Errorf("%s: %w", role, err)
		}
		nf := f
		nf.Path, nf.Host, nf.Digest, nf.DerivedFrom = blob.Path, host, want, digest.Digest{}
		derived := false
		switch role {
		case image.RoleKernel:
			unpack, err := KernelNeedsUnpack(blob)
			if err != nil {
				return res, fmt.Errorf("kernel: %w", err)
			}
			if unpack {
				if nf.Path, err = p.Kernel(ctx, blob); err != nil {
					return res, fmt.Errorf("unpack kernel: %w", err)
				}
				derived = true
			}
			out.Kernel = nf.Path
		case image.RoleInitramfs:
			out.Initramfs = nf.Path
		case image.RoleDisk:
			if res.Format == image.FormatRaw && f.Format != image.FormatRaw {
				if nf.Path, err = p.RawDisk(ctx, blob); err != nil {
					return res, fmt.Errorf("convert disk to raw: %w", err)
				}
				derived, nf.Format = true, image.FormatRaw
			}
			out.Disk, out.DiskFormat = nf.Path, nf.Format
		}
		if derived {
			nf.Digest, nf.DerivedFrom = digest.Digest{}, want
			if fi, err := os.Stat(nf.Path); err == nil {
				nf.Size = fi.Size()
			}
		}
		view, err := p.Store.LinkImage(ctx, res.Image(), ViewName(role, derived, nf.Format), nf.Path)
		if err != nil {
			return res, fmt.Errorf("%s: link into the images view: %w", role, err)
		}
		out.View = filepath.Dir(view)
		out.Files[role] = nf
	}
	if err := p.Store.SetViewSerial(res.Image()); err != nil {
		return res, fmt.Errorf("images view: %w", err)
	}
	return out, nil
}

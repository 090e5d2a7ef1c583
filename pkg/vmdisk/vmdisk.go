// Package vmdisk gives each VM a writable disk of its own from a prepared
// image whose files are on this host: the supported entry point to the
// cache's clones (the cache itself, internal/store, is not API).
package vmdisk

import (
	"context"

	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/clone"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Clone makes a writable disk at dest, for one VM, from the disk of res, a
// prepared result whose files are on this host (a backend's own cache, or
// the target host's). It is the cheapest clone the file system allows (see
// package clone) and is recorded in the cache that holds the disk, so that
// cache gc keeps the base while the clone needs it.
//
// opts.Format, when empty, is the disk's own format: a raw disk is cloned
// (reflink, clonefile, else a sparse copy), a qcow2 disk gets a qcow2
// overlay. The Result's Method says which it was. A result whose files are
// on another host is an error that names the host.
func Clone(ctx context.Context, res messages.Result, dest string, opts clone.Options) (clone.Result, error) {
	return store.Clone(ctx, res, dest, opts)
}

// Package place puts verified images on the host that boots them: it pulls
// content from the object store into the local content store (verifying it
// again on the way in), derives what the hypervisor needs (a raw disk from a
// qcow2, an uncompressed kernel) and links the images view. The targeted
// converter and vmprep prepare --nats both place files this way.
package place

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/kernel"
	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/qcow2"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Names of the conversions in derived-artifact keys; bump one when its
// output could change.
const (
	ConverterName      = "vmprep-qcow2raw-1"
	KernelUnpackerName = "vmprep-unpack-kernel-2" // 2: EFI zboot kernels too
)

// Steps reported to Progress.
const (
	StepPull    = "pull"
	StepConvert = "convert"
	StepUnpack  = "unpack"
)

// ErrBadObject: an object's bytes do not match the digest they must have;
// the caller should delete that object version and have it fetched again.
var ErrBadObject = errors.New("object content does not match its signed digest")

// Placer places files in one local store.
type Placer struct {
	Store *store.Store
	// Objects is where Pull reads from; nil for a store-only placer.
	Objects *objectstore.Store
	// Concurrency of the qcow2 converter (0: its default).
	Concurrency int
	// Progress, if set, receives bytes done per step and role.
	Progress func(step string, role image.Role, done, total int64)
}

func (p *Placer) report(step string, role image.Role, done, total int64) {
	if p.Progress != nil {
		p.Progress(step, role, done, total)
	}
}

// Pull returns the local blob with digest want, streaming it from object
// ref into the local store if it is not there yet. Bytes that do not match
// want (or size, if > 0) are reported as ErrBadObject.
func (p *Placer) Pull(ctx context.Context, role image.Role, want digest.Digest, size int64, ref *messages.ObjectRef) (content.BlobInfo, error) {
	if info, err := p.Store.Lookup(ctx, want); err == nil {
		return info, nil // warm: a stat and a stamp, nothing read
	} else if !errors.Is(err, content.ErrNotFound) {
		return content.BlobInfo{}, err
	}
	if ref == nil || p.Objects == nil {
		return content.BlobInfo{}, fmt.Errorf("%s %s: not in the local store and no object to pull it from: %w", role, want, content.ErrNotFound)
	}
	if ref.Bucket != p.Objects.Bucket() {
		return content.BlobInfo{}, fmt.Errorf("%s: object is in bucket %q, this process uses %q", role, ref.Bucket, p.Objects.Bucket())
	}
	info, err := p.Objects.Stat(ctx, want)
	if err != nil {
		return content.BlobInfo{}, fmt.Errorf("pull %s %s: %w", role, want, err)
	}
	r, err := p.Objects.Open(ctx, info)
	if err != nil {
		return content.BlobInfo{}, fmt.Errorf("pull %s %s: %w", role, want, err)
	}
	defer r.Close()
	counted := &progressReader{r: r, report: func(n int64) { p.report(StepPull, role, n, info.Size) }}
	blob, err := p.Store.Ingest(ctx, want, size, counted)
	switch {
	case err == nil:
		p.report(StepPull, role, info.Size, info.Size)
		return blob, nil
	case errors.Is(err, content.ErrDigestMismatch) || errors.Is(err, content.ErrSizeMismatch) || errors.Is(err, objectstore.ErrDigestMismatch):
		return content.BlobInfo{}, &BadObjectError{Ref: refOf(info), Err: err}
	}
	return content.BlobInfo{}, fmt.Errorf("pull %s %s: %w", role, want, err)
}

// BadObjectError names the object version whose bytes were wrong.
type BadObjectError struct {
	Ref messages.ObjectRef
	Err error
}

func (e *BadObjectError) Error() string {
	return fmt.Sprintf("object %s/%s (version %s): %v", e.Ref.Bucket, e.Ref.Name, e.Ref.NUID, e.Err)
}

// Is makes errors.Is(err, ErrBadObject) true.
func (e *BadObjectError) Is(target error) bool { return target == ErrBadObject }

func (e *BadObjectError) Unwrap() error { return e.Err }

// RefOf is the wire reference of an object version.
func RefOf(info objectstore.Info) *messages.ObjectRef {
	r := refOf(info)
	return &r
}

func refOf(info objectstore.Info) messages.ObjectRef {
	return messages.ObjectRef{Bucket: info.Bucket, Name: info.Name, NUID: info.NUID, Size: info.Size}
}

// RawDisk returns the raw disk converted from the qcow2 blob, converting it
// (sparse) if that was not done before. A disk that is not qcow2 at all —
// a broken magic included — is refused, never copied as raw.
func (p *Placer) RawDisk(ctx context.Context, blob content.BlobInfo) (string, error) {
	key := DerivedKeyOf(image.RoleDisk, blob.SHA256)
	path, err := p.Store.Derived(ctx, key)
	if !errors.Is(err, content.ErrNotFound) {
		return path, err
	}
	// Refuse up front rather than fail half-way.
	if err := p.checkConversionSpace(ctx, blob.Path); err != nil {
		return "", err
	}
	return p.Store.PutDerivedSealed(ctx, key, func(ctx context.Context, dst string) (string, error) {
		digest, opt := outputDigest()
		_, err := qcow2.ConvertToRaw(ctx, blob.Path, dst,
			qcow2.WithSourceFormat(qcow2.FormatQcow2),
			qcow2.WithConcurrency(p.Concurrency),
			qcow2.WithProgress(func(done, total int64) { p.report(StepConvert, image.RoleDisk, done, total) }),
			opt)
		if err != nil {
			return "", err
		}
		return digest()
	})
}

// outputDigest digests a conversion's output as it is written, so that the
// store need not read it back to seal it: pass the option to the
// conversion, and call sum once it succeeded.
func outputDigest() (sum func() (string, error), opt qcow2.ConvertOption) {
	var d *content.SparseDigest
	return func() (string, error) {
			if d == nil {
				return "", errors.New("the conversion wrote nothing to digest")
			}
			return d.Sum()
		}, qcow2.WithWritten(func(size int64) func(int64, []byte) {
			d = content.NewSparseDigest(size)
			return d.Write
		})
}

// checkConversionSpace checks that derived/ has room for the raw conversion
// of the qcow2 image at path. The output is sparse: it takes the image's
// allocated data, not its virtual size (a 3.5 GiB cloud disk holds a few
// hundred MiB), plus a margin for file-system metadata.
func (p *Placer) checkConversionSpace(ctx context.Context, path string) error {
	img, err := qcow2.OpenFile(path)
	if err != nil {
		return err
	}
	defer img.Close()
	data, err := img.AllocatedBytes(ctx)
	if err != nil {
		return err
	}
	return p.Store.CheckFree(filepath.Join(p.Store.Root(), "derived"), conversionSpace(data))
}

// conversionSpace is what a raw conversion writing data bytes may take: the
// data, extent metadata (well under 1/64 of it) and 16 MiB of slack.
func conversionSpace(data int64) int64 {
	return data + data/64 + 16<<20
}

// KernelNeedsUnpack reports whether the kernel blob is packed in a way
// direct boot cannot take (a gzip'd Image, an EFI zboot application).
func KernelNeedsUnpack(blob content.BlobInfo) (bool, error) {
	p, err := kernel.Detect(blob.Path)
	return p.NeedsUnpacking(), err
}

// KernelHeadNeedsUnpack is KernelNeedsUnpack for the first bytes of a kernel.
func KernelHeadNeedsUnpack(head []byte) bool { return kernel.DetectHead(head).NeedsUnpacking() }

// Kernel returns the uncompressed kernel derived from blob, unpacking it if
// that was not done before.
func (p *Placer) Kernel(ctx context.Context, blob content.BlobInfo) (string, error) {
	key := DerivedKeyOf(image.RoleKernel, blob.SHA256)
	path, err := p.Store.Derived(ctx, key)
	if !errors.Is(err, content.ErrNotFound) {
		return path, err
	}
	return p.Store.PutDerived(ctx, key, func(ctx context.Context, dst string) error {
		return kernel.Unpack(ctx, blob.Path, dst, 0)
	})
}

// DerivedKeyOf is the key under which the store keeps what is derived from
// a role's verified source: the raw conversion of a disk, the unpacked
// kernel.
func DerivedKeyOf(role image.Role, source digest.Digest) content.DerivedKey {
	if role == image.RoleKernel {
		return content.DerivedKey{Source: source, Converter: KernelUnpackerName, Format: "vmlinux"}
	}
	return content.DerivedKey{Source: source, Converter: ConverterName, Format: string(image.FormatRaw)}
}

// ViewName is the file name of a role in images/<distro>/<version>/<arch>/.
func ViewName(role image.Role, unpacked bool, format image.DiskFormat) string {
	switch role {
	case image.RoleKernel:
		if unpacked {
			return "vmlinux" // unpacked from a compressed vmlinuz
		}
		return "vmlinuz"
	case image.RoleInitramfs:
		return "initramfs"
	}
	if format == image.FormatRaw {
		return "disk.raw"
	}
	return "disk.img"
}

// HostName is this host's name as a target: the host name up to its first
// dot, with characters a NATS subject token cannot hold replaced by '-'.
func HostName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	h, _, _ = strings.Cut(h, ".")
	b := []byte(h)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

type progressReader struct {
	r      io.Reader
	n      int64
	report func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if n > 0 {
		p.report(p.n)
	}
	return n, err
}

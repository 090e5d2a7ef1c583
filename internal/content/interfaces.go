package content

import (
	"context"
	"io"
	"log/slog"
	"os"

	"github.com/vmprep/vmprep/pkg/digest"
)

// The content store's roles, after containerd's: what a caller needs of it
// and nothing else. *Store implements all three; the image/records layer
// (internal/store) builds on them.
type (
	// Provider reads committed content: a blob by any digest it is known
	// by, a derived artifact by its key. Both verify cheaply (a stat stamp)
	// and quarantine what no longer matches.
	Provider interface {
		Lookup(ctx context.Context, expected digest.Digest) (BlobInfo, error)
		Derived(ctx context.Context, k DerivedKey) (string, error)
	}

	// Ingester writes content: ingest (a resumable partial at IngestPath, or
	// a reader) → verify against the expected digest and size → atomic
	// commit; and derives artifacts from committed blobs.
	Ingester interface {
		IngestPath(expected digest.Digest) string
		Ingest(ctx context.Context, expected digest.Digest, size int64, r io.Reader) (BlobInfo, error)
		Commit(ctx context.Context, ingestPath string, expected digest.Digest, size int64) (BlobInfo, error)
		DiscardIngest(expected digest.Digest)
		PutDerived(ctx context.Context, k DerivedKey, produce func(ctx context.Context, dst string) error) (string, error)
	}

	// Manager lists, re-verifies and collects content; what keeps an entry
	// alive comes from the layer above (a Referrer).
	Manager interface {
		List(ctx context.Context, refs Referrer) ([]Entry, error)
		GC(ctx context.Context, opts GCOptions, refs Referrer) (GCReport, error)
		Verify(ctx context.Context, report func(VerifyResult)) error
	}
)

var (
	_ Provider = (*Store)(nil)
	_ Ingester = (*Store)(nil)
	_ Manager  = (*Store)(nil)
)

// Layout names the layer above uses to recognise a stored file by its path
// relative to the root.
const (
	DirBlobs   = dirBlobs   // blobs/sha256/<hex>
	DirDerived = dirDerived // derived/<name>
)

// Logger is the logger the store was opened with.
func (s *Store) Logger() *slog.Logger { return s.log }

// FileIdentity is the device and inode numbers of fi where the platform has
// them (0, 0 elsewhere): what tells a file from another put at its path.
func FileIdentity(fi os.FileInfo) (device, inode uint64) {
	var st stamp
	platformStamp(fi, &st)
	return st.Device, st.Inode
}

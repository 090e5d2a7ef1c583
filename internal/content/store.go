// Package content is vmprep's content store: content addressed by digest,
// written by ingest → verify → atomic commit, and the artifacts derived from
// it (a raw disk converted from a qcow2) kept beside it. It knows nothing of
// images, catalogs or signatures: the image/records layer above it
// (internal/store) names files for people and says, through a Referrer, what
// keeps them alive.
//
// Its interfaces follow containerd's split: a Provider reads committed
// content, an Ingester writes it, a Manager lists, verifies and collects it.
// *Store implements all three.
//
// Layout under the root (the layer above adds images/, records/, serials/,
// uses/ beside these):
//
//	blobs/sha256/<hex>        committed, verified blobs (0444)
//	index/sha512/<hex>        alias: the SHA-256 hex of the blob with that SHA-512
//	ingest/<alg>-<hex>[.meta] partial downloads (written by the download engine)
//	derived/<alg>-<hex>_<converter>_<format>   derived artifacts
//	stamps/{blobs,derived}/…  stat stamps recorded at commit (the fast path)
//	quarantine/               files that failed verification, with a .note.json
//	locks/                    flock files; never hold one across processes by other means
//
// Several processes may share one root. Everything published is written to a
// temporary name in its destination directory (".<name>.tmp-*"), fsynced,
// renamed and the directory fsynced, so a crash leaves the old state or the
// new one plus at worst a stale temporary that GC removes.
//
// Fetching an asset with expected digest d:
//
//	if info, err := s.Lookup(ctx, d); err == nil { use(info) }  // warm: stat + stamp, no hashing
//	unlock, err := s.Lock(ctx, d.String())                       // one downloader per digest
//	defer unlock()
//	if info, err := s.Lookup(ctx, d); err == nil { use(info) }   // someone else fetched it
//	download into s.IngestPath(d) (resumable; sidecar IngestPath(d)+".meta")
//	info, err := s.Commit(ctx, s.IngestPath(d), d, size)        // verify, publish, or quarantine
//
// Deriving: PutDerived(ctx, DerivedKey{Source: info.SHA256, Converter, Format},
// produce). GC keeps what the Referrer marks referenced, and anything younger
// than GCOptions.MinAge.
//
// GC and writers: Commit and PutDerived hold the publish lock shared (and so
// do publishers of the layer above, through PublishLock), GC holds it
// exclusively, so GC never sees half a publication. A path that Lookup or
// Derived returned is not protected, though: an unreferenced file older than
// MinAge may be collected before the caller links it, in which case the
// layer above fails with fs.ErrNotExist and the caller fetches again.
package content

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrNotFound: the blob, derived artifact or record is not in the store.
	ErrNotFound = errors.New("not found in store")
	// ErrQuarantined: a stored file no longer matched its digest and was moved to quarantine/.
	ErrQuarantined = errors.New("quarantined")
	// ErrDigestMismatch: content did not match the expected digest (see *MismatchError).
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch: content did not have the expected size (see *MismatchError).
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrInsufficientSpace: a file system lacks room (see *SpaceError).
	ErrInsufficientSpace = errors.New("insufficient disk space")
	// ErrInvalidName: a name would escape the store root or is otherwise
	// unusable (a planted symlink where a directory belongs, say). It is
	// permanent: the same name fails the same way until someone intervenes.
	ErrInvalidName error = permanentSentinel("invalid name")
)

// QuarantinedError is a stored file that stopped matching its digest and was
// moved out of the way (or deleted, when it could not be moved): it is no
// longer in the store, so it matches ErrNotFound as well as ErrQuarantined,
// and the next request fetches or derives it again.
type QuarantinedError struct {
	// What names the file: "blob sha256:…" or "derived <name>".
	What string
	// Reason says what was wrong with it.
	Reason string
	// To is where it was moved; empty when it had to be deleted.
	To string
}

func (e *QuarantinedError) Error() string {
	if e.To == "" {
		return "store: " + e.What + ": " + e.Reason + "; removed (it will be fetched or derived again)"
	}
	return "store: " + e.What + ": " + e.Reason + "; moved to " + e.To + " (it will be fetched or derived again)"
}

// Is makes errors.Is(err, ErrQuarantined) and errors.Is(err, ErrNotFound) hold.
func (e *QuarantinedError) Is(target error) bool {
	return target == ErrQuarantined || target == ErrNotFound
}

// permanentSentinel is a sentinel error that says, like the store's error
// types, that it cannot pass with time.
type permanentSentinel string

func (e permanentSentinel) Error() string { return string(e) }

// Permanent reports that the error cannot pass with time.
func (permanentSentinel) Permanent() bool { return true }

// EnvCacheDir names the environment variable that overrides DefaultRoot.
const EnvCacheDir = "VMPREP_CACHE_DIR"

// Directory names under the root.
const (
	dirBlobs      = "blobs"
	dirIndex      = "index"
	dirIngest     = "ingest"
	dirDerived    = "derived"
	dirStamps     = "stamps"
	dirQuarantine = "quarantine"
	dirLocks      = "locks"
)

// DefaultRoot is the store root used when none is given: $VMPREP_CACHE_DIR if
// set, else <os.UserCacheDir()>/vmprep. The result is absolute.
func DefaultRoot() (string, error) {
	if d := os.Getenv(EnvCacheDir); d != "" {
		abs, err := filepath.Abs(d)
		if err != nil {
			return "", fmt.Errorf("store: %s=%q: %w", EnvCacheDir, d, err)
		}
		return abs, nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("store: no cache directory (set %s): %w", EnvCacheDir, err)
	}
	return filepath.Join(base, "vmprep"), nil
}

// Store is a content store rooted at one directory. It is safe for concurrent
// use by many goroutines, and by many processes sharing the same root.
type Store struct {
	root     string
	log      *slog.Logger
	minFree  int64
	lockPoll time.Duration
	locks    lockTable
	// hashed: ingest files this process hashed in full (see hashedFiles).
	hashed hashedFiles

	// hashedBytes counts bytes read for hashing; tests use it to prove the
	// fast path reads nothing.
	hashedBytes atomic.Int64
	// crashPoint, if set (tests only), is called at named steps of Commit and
	// PutDerived; crash tests kill the process there.
	crashPoint func(step string)
}

// Option configures a Store.
type Option func(*Store)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) {
		if l != nil {
			s.log = l
		}
	}
}

// WithMinFree sets a reserve that CheckFree keeps free on top of what is
// asked for (default 0).
func WithMinFree(bytes int64) Option {
	return func(s *Store) {
		if bytes > 0 {
			s.minFree = bytes
		}
	}
}

// WithLockPoll sets the longest interval between attempts to take a lock held
// by another process (default 100ms; waits start at 2ms and double).
func WithLockPoll(d time.Duration) Option {
	return func(s *Store) {
		if d > 0 {
			s.lockPoll = d
		}
	}
}

// Open opens the store at root, creating its layout if needed.
func Open(root string, opts ...Option) (*Store, error) {
	if root == "" {
		return nil, fmt.Errorf("store: open: empty root")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store: open %q: %w", root, err)
	}
	s := &Store{
		root:     abs,
		log:      slog.New(slog.DiscardHandler),
		lockPoll: 100 * time.Millisecond,
		locks:    lockTable{m: map[string]*lockSlot{}},
	}
	for _, o := range opts {
		o(s)
	}
	dirs := []string{
		filepath.Join(dirBlobs, "sha256"),
		filepath.Join(dirIndex, "sha512"),
		dirIngest,
		dirDerived,
		filepath.Join(dirStamps, "blobs"),
		filepath.Join(dirStamps, "derived"),
		dirQuarantine,
		filepath.Join(dirLocks, lockUser),
		filepath.Join(dirLocks, lockBlob),
		filepath.Join(dirLocks, lockDerived),
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("store: open %s: %w", abs, err)
	}
	// The root may be a symlink; the layout inside it may not, or a planted
	// link (locks -> /etc) would make the store create files elsewhere.
	for _, d := range dirs {
		if _, err := s.MkdirInRoot(strings.Split(d, string(filepath.Separator))...); err != nil {
			return nil, fmt.Errorf("store: open %s: %w", abs, err)
		}
	}
	return s, nil
}

// Root returns the absolute store root.
func (s *Store) Root() string { return s.root }

func (s *Store) step(name string) {
	if s.crashPoint != nil {
		s.crashPoint(name)
	}
}

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.root}, elem...)...)
}

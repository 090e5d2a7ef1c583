// Package objectstore keeps verified content in a JetStream Object Store
// bucket, named by content address ("sha256/<hex>"), so that processes on
// different hosts hand each other digests instead of paths.
//
// It reads and writes the bucket in the Object Store's own format (ADR-20:
// chunks on $O.<bucket>.C.<nuid>, a rolled-up meta message on
// $O.<bucket>.M.<base64url(name)>), so the nats CLI and any other client see
// ordinary objects, but with two properties the library's Put and Get lack:
//
//   - memory is bounded: at most Window chunks are in flight on a put (the
//     library keeps up to 4,000 async publishes pending, ~500 MiB at 128 KiB),
//     and a get pulls a bounded batch;
//   - a put that stalls (no acknowledgement within the stall timeout, as seen
//     on R3 buckets under load) is abandoned, its chunks deleted, and retried;
//   - nothing here purges: chunks are deleted message by message (see
//     deleteChunks), so the users that delete need no right to purge, which
//     would let them wipe the bucket in one call.
//
// The object digest in the meta message is the writer's claim. Readers that
// must not trust the writer hash what they read themselves (Open returns the
// bytes; callers compare with the digest a signed manifest gives).
package objectstore

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/vmprep/vmprep/pkg/digest"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrNotFound: no object for the digest (or not the version asked for).
	ErrNotFound = errors.New("object not found")
	// ErrDigestMismatch: the bytes do not match the digest expected of them.
	ErrDigestMismatch = errors.New("object digest mismatch")
	// ErrStalled: a put or get made no progress within the stall timeout.
	ErrStalled = errors.New("object transfer stalled")
)

// Info describes one stored object version.
type Info struct {
	Bucket string `json:"bucket"`
	Name   string `json:"name"`
	// NUID identifies this version of the object: a new put of the same name
	// gets a new one.
	NUID string `json:"nuid"`
	Size int64  `json:"size"`
	// Chunks is the number of chunk messages.
	Chunks uint32 `json:"-"`
	// SHA256 is the object's digest as recorded by its writer.
	SHA256  digest.Digest `json:"-"`
	ModTime time.Time     `json:"-"`
}

// Name is the object name of content with digest d: "<alg>/<hex>".
func Name(d digest.Digest) string { return string(d.Algorithm) + "/" + strings.ToLower(d.Hex) }

// Store is one object bucket.
type Store struct {
	js        jetstream.JetStream
	stream    jetstream.Stream
	bucket    string
	chunkSize int
	window    int
	stall     time.Duration
	attempts  int
	log       *slog.Logger
}

// Option configures a Store.
type Option func(*Store)

// WithChunkSize sets the chunk size of new objects (default 256 KiB; it must
// stay below the server's max_payload).
func WithChunkSize(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.chunkSize = n
		}
	}
}

// WithWindow sets how many chunks a put keeps unacknowledged and a get
// buffers (default 16: 4 MiB at the default chunk size).
func WithWindow(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.window = n
		}
	}
}

// WithStallTimeout sets how long a transfer may go without progress before
// it is abandoned (default 30s).
func WithStallTimeout(d time.Duration) Option {
	return func(s *Store) {
		if d > 0 {
			s.stall = d
		}
	}
}

// WithPutAttempts bounds the attempts of one put (default 4).
func WithPutAttempts(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.attempts = n
		}
	}
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) {
		if l != nil {
			s.log = l
		}
	}
}

// Config says how a missing bucket is created.
type Config struct {
	Bucket   string
	Replicas int
	// MaxBytes caps the bucket (0: unlimited).
	MaxBytes int64
}

// StreamName is the stream that holds bucket.
func StreamName(bucket string) string { return "OBJ_" + bucket }

// StreamConfig is the stream that backs bucket cfg.Bucket.
func StreamConfig(cfg Config) jetstream.StreamConfig {
	replicas := cfg.Replicas
	if replicas <= 0 {
		replicas = 1
	}
	maxBytes := cfg.MaxBytes
	if maxBytes <= 0 {
		maxBytes = -1
	}
	return jetstream.StreamConfig{
		Name:        StreamName(cfg.Bucket),
		Description: "vmprep verified content, named by digest",
		Subjects:    []string{"$O." + cfg.Bucket + ".C.>", "$O." + cfg.Bucket + ".M.>"},
		MaxAge:      0,
		MaxBytes:    maxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		Discard:     jetstream.DiscardNew,
		AllowRollup: true,
		AllowDirect: true,
	}
}

// ValidBucket checks a bucket name (the Object Store's rule).
func ValidBucket(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("object bucket %q: want 1-64 characters", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("object bucket %q: only A-Z a-z 0-9 _ - are allowed", name)
		}
	}
	return nil
}

// Open binds to bucket cfg.Bucket, creating it if it does not exist. An
// existing bucket is used as it is (an operator may have changed it).
func Open(ctx context.Context, js jetstream.JetStream, cfg Config, opts ...Option) (*Store, error) {
	if err := ValidBucket(cfg.Bucket); err != nil {
		return nil, err
	}
	s := newStore(js, cfg.Bucket, opts)
	stream, err := js.Stream(ctx, StreamName(cfg.Bucket))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		stream, err = js.CreateStream(ctx, StreamConfig(cfg))
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			stream, err = js.Stream(ctx, StreamName(cfg.Bucket))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("object bucket %s: %w", cfg.Bucket, err)
	}
	s.stream = stream
	return s, nil
}

// Bind binds to an existing bucket without creating it (a client that
// only reads).
func Bind(ctx context.Context, js jetstream.JetStream, bucket string, opts ...Option) (*Store, error) {
	if err := ValidBucket(bucket); err != nil {
		return nil, err
	}
	s := newStore(js, bucket, opts)
	stream, err := js.Stream(ctx, StreamName(bucket))
	if err != nil {
		return nil, fmt.Errorf("object bucket %s: %w", bucket, err)
	}
	s.stream = stream
	return s, nil
}

func newStore(js jetstream.JetStream, bucket string, opts []Option) *Store {
	s := &Store{
		js: js, bucket: bucket,
		chunkSize: 256 << 10, window: 16, stall: 30 * time.Second, attempts: 4,
		log: slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Bucket is the bucket's name.
func (s *Store) Bucket() string { return s.bucket }

func (s *Store) metaSubject(name string) string {
	return "$O." + s.bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name))
}

func (s *Store) chunkSubject(nuid string) string { return "$O." + s.bucket + ".C." + nuid }

// Stat returns the current version of the object for d, or ErrNotFound.
func (s *Store) Stat(ctx context.Context, d digest.Digest) (Info, error) {
	name := Name(d)
	m, err := s.stream.GetLastMsgForSubject(ctx, s.metaSubject(name))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Info{}, fmt.Errorf("%s/%s: %w", s.bucket, name, ErrNotFound)
	}
	if err != nil {
		return Info{}, fmt.Errorf("%s/%s: %w", s.bucket, name, err)
	}
	var oi jetstream.ObjectInfo
	if err := json.Unmarshal(m.Data, &oi); err != nil {
		return Info{}, fmt.Errorf("%s/%s: unreadable object meta: %w", s.bucket, name, err)
	}
	if oi.Deleted || oi.NUID == "" {
		return Info{}, fmt.Errorf("%s/%s: %w", s.bucket, name, ErrNotFound)
	}
	// Any user that may direct-get metadata (clients included) can have
	// the server answer onto this subject: another object's metadata
	// (rolling this one's up, with its Nats-Rollup header) or a relay of
	// content its publisher chose. Read as this object's, it would name
	// another object's chunks, which the healer would then delete. A relay
	// with headers keeps the subject it came from; a payload alone still
	// names its own object.
	if why := foreignMeta(m.Header, s.metaSubject(name), name, d, oi); why != "" {
		return Info{}, fmt.Errorf("%s/%s: %w (the last metadata is not this object's: %s; it is put again)", s.bucket, name, ErrNotFound, why)
	}
	if oi.Size > 1<<62 {
		return Info{}, fmt.Errorf("%s/%s: object meta claims %d bytes", s.bucket, name, oi.Size)
	}
	info := Info{Bucket: s.bucket, Name: name, NUID: oi.NUID, Size: int64(oi.Size), Chunks: oi.Chunks, ModTime: oi.ModTime}
	if sum, err := jetstream.DecodeObjectDigest(oi.Digest); err == nil && len(sum) == sha256.Size {
		info.SHA256 = digest.Digest{Algorithm: digest.SHA256, Hex: fmt.Sprintf("%x", sum)}
	}
	return info, nil
}

// foreignMeta says why metadata read on subject for object name (digest
// d) is not that object's, or "": a relay (a Nats-Subject other than
// subject: the stored copy keeps the one it came from), another object's
// name, or a digest other than d.
func foreignMeta(h nats.Header, subject, name string, d digest.Digest, oi jetstream.ObjectInfo) string {
	for k, subs := range h {
		if !strings.EqualFold(k, "Nats-Subject") {
			continue
		}
		for _, sub := range subs {
			if sub != subject {
				return "relayed by the server from " + sub
			}
		}
	}
	if oi.Name != name {
		return fmt.Sprintf("it names object %q", oi.Name)
	}
	if d.Algorithm == digest.SHA256 {
		sum, err := jetstream.DecodeObjectDigest(oi.Digest)
		if err != nil || fmt.Sprintf("%x", sum) != d.Hex {
			return fmt.Sprintf("its digest is %q", oi.Digest)
		}
	}
	return ""
}

// Delete removes the object for d, but only if its current version is nuid
// (so a reader that found a bad version cannot delete a good replacement).
// Deleting what is already gone succeeds.
func (s *Store) Delete(ctx context.Context, d digest.Digest, nuid string) error {
	cur, err := s.Stat(ctx, d)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if nuid != "" && cur.NUID != nuid {
		return nil
	}
	meta := jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: cur.Name},
		Bucket:     s.bucket, NUID: cur.NUID, ModTime: time.Now().UTC(), Deleted: true,
	}
	data, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	m := nats.NewMsg(s.metaSubject(cur.Name))
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	m.Data = data
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("delete %s/%s: %w", s.bucket, cur.Name, err)
	}
	if _, err := s.deleteChunks(ctx, cur.NUID); err != nil {
		return fmt.Errorf("delete %s/%s: %w", s.bucket, cur.Name, err)
	}
	return nil
}

// PutFile stores the file at path as the object for d. The bytes are hashed
// as they are sent: if they do not match d (the file changed, or was never
// right) nothing is published and ErrDigestMismatch is returned. A put that
// fails or stalls is purged and retried from the start of the file.
// progress, if set, receives the bytes acknowledged so far.
func (s *Store) PutFile(ctx context.Context, d digest.Digest, path string, progress func(done int64)) (Info, error) {
	var lastErr error
	delay := 500 * time.Millisecond
	for attempt := 1; attempt <= s.attempts; attempt++ {
		info, err := s.putOnce(ctx, d, path, progress)
		if err == nil {
			return info, nil
		}
		if ctx.Err() != nil || errors.Is(err, ErrDigestMismatch) || errors.Is(err, os.ErrNotExist) {
			return Info{}, err
		}
		lastErr = err
		if attempt < s.attempts {
			s.log.Warn("object put failed; retrying", "object", Name(d), "attempt", attempt, "err", err)
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return Info{}, fmt.Errorf("put %s/%s: %w (last error: %v)", s.bucket, Name(d), ctx.Err(), lastErr)
			case <-t.C:
			}
			delay *= 2
		}
	}
	return Info{}, fmt.Errorf("put %s/%s: gave up after %d attempts: %w", s.bucket, Name(d), s.attempts, lastErr)
}

func (s *Store) putOnce(ctx context.Context, d digest.Digest, path string, progress func(int64)) (info Info, err error) {
	f, err := os.Open(path)
	if err != nil {
		return Info{}, fmt.Errorf("put %s/%s: %w", s.bucket, Name(d), err)
	}
	defer f.Close()
	id := nuid.Next()
	subj := s.chunkSubject(id)
	defer func() {
		if err != nil {
			// Chunks without a meta message are invisible but take space
			// (what this misses, Sweep collects later).
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.stall)
			_, _ = s.deleteChunks(pctx, id)
			cancel()
		}
	}()
	want, err := d.Algorithm.New()
	if err != nil {
		return Info{}, err
	}
	h256 := sha256.New()
	hashes := []hash.Hash{h256}
	if d.Algorithm != digest.SHA256 {
		hashes = append(hashes, want)
	}
	// A ring of window buffers: buffer i is reused only after the chunk that
	// last used it was acknowledged, so an in-flight message (which the
	// client may resend on a transient "no responders") never changes.
	bufs := make([][]byte, s.window)
	inflight := make([]jetstream.PubAckFuture, 0, s.window)
	var acked, sent int64
	var chunks uint32
	waitOldest := func() error {
		fut := inflight[0]
		t := time.NewTimer(s.stall)
		defer t.Stop()
		select {
		case <-fut.Ok():
		case err := <-fut.Err():
			return fmt.Errorf("chunk %d: %w", chunks-uint32(len(inflight)), err)
		case <-t.C:
			return fmt.Errorf("%w: no acknowledgement for %s", ErrStalled, s.stall)
		case <-ctx.Done():
			return ctx.Err()
		}
		acked += int64(len(fut.Msg().Data))
		inflight = inflight[1:]
		if progress != nil {
			progress(acked)
		}
		return nil
	}
	for i := 0; ; i++ {
		if len(inflight) == s.window {
			if err := waitOldest(); err != nil {
				return Info{}, err
			}
		}
		slot := i % s.window
		if bufs[slot] == nil {
			bufs[slot] = make([]byte, s.chunkSize)
		}
		n, rerr := io.ReadFull(f, bufs[slot])
		if n > 0 {
			data := bufs[slot][:n]
			for _, h := range hashes {
				h.Write(data)
			}
			m := &nats.Msg{Subject: subj, Data: data}
			fut, err := s.js.PublishMsgAsync(m, jetstream.WithStallWait(s.stall))
			if err != nil {
				return Info{}, fmt.Errorf("chunk %d: %w", chunks, err)
			}
			inflight = append(inflight, fut)
			chunks++
			sent += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return Info{}, fmt.Errorf("read %s: %w", path, rerr)
		}
		if ctx.Err() != nil {
			return Info{}, ctx.Err()
		}
	}
	for len(inflight) > 0 {
		if err := waitOldest(); err != nil {
			return Info{}, err
		}
	}
	got := fmt.Sprintf("%x", want.Sum(nil))
	if d.Algorithm == digest.SHA256 {
		got = fmt.Sprintf("%x", h256.Sum(nil))
	}
	if !strings.EqualFold(got, d.Hex) {
		return Info{}, fmt.Errorf("put %s/%s: %s holds %s:%s: %w", s.bucket, Name(d), path, d.Algorithm, got, ErrDigestMismatch)
	}
	sum := h256.Sum(nil)
	meta := jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{
			Name: Name(d),
			Opts: &jetstream.ObjectMetaOptions{ChunkSize: uint32(s.chunkSize)},
		},
		Bucket: s.bucket, NUID: id, Size: uint64(sent), Chunks: chunks, ModTime: time.Now().UTC(),
		Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(sum),
	}
	data, err := json.Marshal(meta)
	if err != nil {
		return Info{}, err
	}
	mm := nats.NewMsg(s.metaSubject(meta.Name))
	mm.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	mm.Data = data
	pctx, cancel := context.WithTimeout(ctx, s.stall)
	defer cancel()
	// An earlier version (a corrupt one being replaced) loses its chunks
	// once the new meta message is in.
	old, oldErr := s.Stat(pctx, d)
	if _, err := s.js.PublishMsg(pctx, mm); err != nil {
		return Info{}, fmt.Errorf("publish meta: %w", err)
	}
	if oldErr == nil && old.NUID != id {
		_, _ = s.deleteChunks(pctx, old.NUID)
	}
	return Info{
		Bucket: s.bucket, Name: meta.Name, NUID: id, Size: sent, Chunks: chunks, ModTime: meta.ModTime,
		SHA256: digest.Digest{Algorithm: digest.SHA256, Hex: fmt.Sprintf("%x", sum)},
	}, nil
}

// digestOf is the content address an object name stands for.
func digestOf(info Info) digest.Digest {
	alg, hex, _ := strings.Cut(info.Name, "/")
	return digest.Digest{Algorithm: digest.Algorithm(alg), Hex: hex}
}

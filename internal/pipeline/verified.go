package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/singleflight"

	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// errObjectMismatch: an object's bytes are not what the signed manifest says.
var errObjectMismatch = errors.New("object does not match its signed digest")

// headSize is how much of an object's start the verifier keeps: enough for
// every magic number routing looks at (gzip, qcow2, EFI zboot).
const headSize = 64

// verifiedRecord is what the verifier records about an object version it
// streamed and found matching.
type verifiedRecord struct {
	NUID   string        `json:"nuid"`
	Size   int64         `json:"size"`
	SHA256 digest.Digest `json:"sha256"`
	// Head is the object's first bytes (routing reads magic numbers from it).
	Head       []byte    `json:"head"`
	VerifiedAt time.Time `json:"verified_at"`
	// ReportSeq is the work-stream sequence of the newest corruption report
	// this verification answers (it began after that report was stored).
	ReportSeq uint64 `json:"report_seq,omitempty"`
}

// verifiedObjects remembers verified object versions (KV_VMPREP_VERIFIED),
// so that a thousand requests for one image stream it once; a new version of
// the object (a new NUID) is verified again. Concurrent checks of the same
// version in this process share one stream.
type verifiedObjects struct {
	kv jetstream.KeyValue
	nc *nats.Conn // reads records refusing relayed ones (stage.GetOwned)
	// flight shares one stream among concurrent checks of one version. Its
	// waiters wait for the first caller's stream, which ends with that
	// caller's context: in a runner, every handler's ends with the drain.
	flight singleflight.Group
}

// VerifiedWriter is the role that writes verified records (stage.HeaderWriter).
const VerifiedWriter = "verifier"

func newVerifiedObjects(nc *nats.Conn, kv jetstream.KeyValue) *verifiedObjects {
	return &verifiedObjects{kv: kv, nc: nc}
}

func verifiedKey(d digest.Digest) string { return string(d.Algorithm) + "." + strings.ToLower(d.Hex) }

// Check returns the record of object version info if it was verified
// before, else streams it and compares size and digest with asset's (the
// signed manifest's). A mismatch is errObjectMismatch.
func (v *verifiedObjects) Check(ctx context.Context, objs *objectstore.Store, info objectstore.Info, a image.Asset, progress func(int64)) (verifiedRecord, error) {
	if rec, ok := v.record(ctx, a.Digest); ok && rec.NUID == info.NUID && rec.Size == info.Size {
		return rec, nil
	}
	return v.verify(ctx, objs, info, a, progress, "", 0)
}

// Recheck streams object version info again whatever its record says (it
// was reported corrupt) and records the outcome as answering the report
// with work-stream sequence reportSeq. A mismatch is errObjectMismatch.
func (v *verifiedObjects) Recheck(ctx context.Context, objs *objectstore.Store, info objectstore.Info, a image.Asset, reportSeq uint64) (verifiedRecord, error) {
	return v.verify(ctx, objs, info, a, nil, "recheck:", reportSeq)
}

// record is the verification recorded for d, if any. A record the server
// relayed onto the key (a fetcher direct-getting a lease value it wrote,
// with the record's subject as reply subject) is none: it would let bytes
// the fetcher stored under a real digest pass unstreamed.
func (v *verifiedObjects) record(ctx context.Context, d digest.Digest) (verifiedRecord, bool) {
	data, _, err := stage.GetOwned(ctx, v.nc, messages.BucketVerified, verifiedKey(d), VerifiedWriter)
	if err != nil {
		return verifiedRecord{}, false
	}
	var rec verifiedRecord
	if json.Unmarshal(data, &rec) != nil {
		return verifiedRecord{}, false
	}
	return rec, true
}

// verify streams info (concurrent calls for one version and kind share one
// stream) and records it if it matches.
func (v *verifiedObjects) verify(ctx context.Context, objs *objectstore.Store, info objectstore.Info, a image.Asset, progress func(int64), kind string, reportSeq uint64) (verifiedRecord, error) {
	key := verifiedKey(a.Digest)
	v2, err, _ := v.flight.Do(kind+key+"@"+info.NUID, func() (any, error) {
		rec, err := v.stream(ctx, objs, info, a, progress)
		if err != nil {
			return rec, err
		}
		rec.ReportSeq = reportSeq
		data, _ := json.Marshal(rec)
		if _, err := stage.PutOwned(ctx, v.nc, messages.BucketVerified, key, VerifiedWriter, data, nil); err != nil {
			return rec, fmt.Errorf("record verification of %s: %w", info.Name, err)
		}
		return rec, nil
	})
	rec, _ := v2.(verifiedRecord)
	return rec, err
}

// Forget drops the record for d (its object was deleted).
func (v *verifiedObjects) Forget(ctx context.Context, d digest.Digest) {
	_ = stage.DeleteOwned(ctx, v.nc, messages.BucketVerified, verifiedKey(d), VerifiedWriter, nil)
}

func (v *verifiedObjects) stream(ctx context.Context, objs *objectstore.Store, info objectstore.Info, a image.Asset, progress func(int64)) (verifiedRecord, error) {
	if a.Size > 0 && info.Size != a.Size {
		return verifiedRecord{}, fmt.Errorf("%w: %s holds %d bytes, the manifest says %d", errObjectMismatch, info.Name, info.Size, a.Size)
	}
	r, err := objs.Open(ctx, info)
	if err != nil {
		return verifiedRecord{}, err
	}
	defer r.Close()
	want, err := a.Digest.Algorithm.New()
	if err != nil {
		return verifiedRecord{}, err
	}
	h256 := sha256.New()
	head := &headWriter{max: headSize}
	n, err := io.Copy(io.MultiWriter(want, h256, head, &progressWriter{fn: progress}), r)
	if errors.Is(err, objectstore.ErrDigestMismatch) {
		return verifiedRecord{}, fmt.Errorf("%w: %v", errObjectMismatch, err)
	}
	if err != nil {
		return verifiedRecord{}, fmt.Errorf("verify %s: %w", info.Name, err)
	}
	got, sum256 := digest.FromHash(a.Digest.Algorithm, want), digest.FromHash(digest.SHA256, h256)
	if n != info.Size || (a.Size > 0 && n != a.Size) {
		return verifiedRecord{}, fmt.Errorf("%w: %s streamed %d bytes, expected %d", errObjectMismatch, info.Name, n, a.Size)
	}
	if !strings.EqualFold(got.Hex, a.Digest.Hex) {
		return verifiedRecord{}, fmt.Errorf("%w: %s hashes to %s, the signed manifest says %s", errObjectMismatch, info.Name, got, a.Digest)
	}
	return verifiedRecord{NUID: info.NUID, Size: n, SHA256: sum256, Head: head.b, VerifiedAt: time.Now().UTC()}, nil
}

type headWriter struct {
	b   []byte
	max int
}

func (h *headWriter) Write(p []byte) (int, error) {
	if room := h.max - len(h.b); room > 0 {
		h.b = append(h.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// progressWriter reports the bytes written so far.
type progressWriter struct {
	n  int64
	fn func(int64)
}

func (p *progressWriter) Write(b []byte) (int, error) {
	p.n += int64(len(b))
	if p.fn != nil {
		p.fn(p.n)
	}
	return len(b), nil
}

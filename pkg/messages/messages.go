// Package messages defines the versioned JSON events that flow between vmprep's
// stages and its clients, and the NATS subjects, streams and consumers that carry
// them. Every event has "v" (schema version) and "type"; a consumer refuses a
// version it does not know rather than guessing.
//
// A client in any language can publish a PrepareRequest to SubjectPrepare with a
// plain NATS client (JetStream publish, or even core publish: the subject is
// captured by the work stream) and read its Result from ResultSubject(id).
package messages

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
)

// Version is the schema version this build reads and writes.
const Version = 1

// Event types.
const (
	TypePrepareRequest = "prepare.request"
	TypeAsset          = "asset"
	TypeProgress       = "progress"
	TypeResult         = "result"
	TypeDeadLetter     = "dead_letter"
	TypeCorruptReport  = "corrupt_report"
)

// Subjects, streams and consumers. The work stream uses WorkQueue retention: each
// message is consumed once by the one durable consumer whose filter matches it.
const (
	// StreamWork holds every unit of pending work.
	StreamWork = "VMPREP_WORK"
	// SubjectPrepare carries PrepareRequest from clients to the resolver.
	SubjectPrepare = "vmprep.prepare"
	// SubjectFetch carries AssetEvent from the resolver to the fetcher.
	SubjectFetch = "vmprep.asset.fetch"
	// SubjectVerify carries AssetEvent from the fetcher to the verifier.
	SubjectVerify = "vmprep.asset.verify"
	// SubjectConvert carries disk AssetEvents that need conversion to the converter.
	SubjectConvert = "vmprep.asset.convert"
	// SubjectDone + "." + publisher carries finished or failed AssetEvents
	// to the collector (see DoneSubject): each stage publishes on its own
	// subject, so the collector knows who speaks.
	SubjectDone = "vmprep.asset.done"
	// SubjectCorrupt carries CorruptReport from whoever found a stored
	// object's bytes wrong (a converter, a client) to the healer, which
	// checks the object itself and deletes it if it is bad.
	SubjectCorrupt = "vmprep.asset.corrupt"
	// ConsumerHealer is the durable consumer of SubjectCorrupt (the
	// verifier process binds it: it may delete objects).
	ConsumerHealer = "healer"

	// SubjectConvertAhead carries, in core NATS (not stored: it is a hint,
	// lost if no converter listens), the AssetEvent of a qcow2 disk wanted
	// as raw that a fetcher starts downloading into a shared cache, so that
	// a converter converts it while it arrives. Converters take each in
	// queue group QueueConvertAhead.
	SubjectConvertAhead = "vmprep.ahead"
	// QueueConvertAhead is the converters' queue group on SubjectConvertAhead.
	QueueConvertAhead = "converter"

	// StreamResults keeps final results (limits retention) so a client that
	// subscribes late, or repeats a request id, still reads the one result.
	StreamResults = "VMPREP_RESULTS"
	// SubjectResultPrefix + request id carries the one Result of a request.
	SubjectResultPrefix = "vmprep.result."

	// SubjectProgressPrefix + request id carries Progress events (core NATS, not stored).
	SubjectProgressPrefix = "vmprep.progress."

	// StreamDead keeps dead letters: messages that could not be processed at all.
	StreamDead = "VMPREP_DEAD"
	// SubjectDeadPrefix + stage name carries DeadLetter.
	SubjectDeadPrefix = "vmprep.dead."

	// BucketRequests is the KV bucket that joins a request's assets into one result.
	BucketRequests = "VMPREP_REQUESTS"

	// SubjectTargetPrefix + host carries a targeted request's verified assets
	// to the converter running on that host (see TargetSubject).
	SubjectTargetPrefix = "vmprep.asset.target."
	// BucketLeases is the KV bucket of origin-download leases, one per digest.
	BucketLeases = "VMPREP_LEASES"
	// BucketVerified is the KV bucket where the verifier records which object
	// versions it streamed and found matching their signed digest.
	BucketVerified = "VMPREP_VERIFIED"
)

// Stage (and durable consumer) names.
const (
	StageResolver  = "resolver"
	StageFetcher   = "fetcher"
	StageVerifier  = "verifier"
	StageConverter = "converter"
	StageCollector = "collector"
)

// Namespaces keep clients apart. A client that publishes its requests to
// vmprep.prepare.<ns> gets its results on vmprep.result.<ns>.<id> and its
// progress on vmprep.progress.<ns>.<id>, and its request ids are its own:
// NATS permissions that pin a user to one namespace keep users from reading
// (or answering) each other's requests. The namespace comes from the subject
// a request arrived on, never from its body. Requests published to
// vmprep.prepare are in the default namespace "".

// PrepareSubject is where requests in namespace ns are published.
func PrepareSubject(ns string) string {
	if ns == "" {
		return SubjectPrepare
	}
	return SubjectPrepare + "." + ns
}

// NamespaceOf returns the namespace of a request that arrived on subject,
// and whether subject is a prepare subject at all.
func NamespaceOf(subject string) (string, bool) {
	if subject == SubjectPrepare {
		return "", true
	}
	ns, ok := strings.CutPrefix(subject, SubjectPrepare+".")
	if !ok || ValidateNamespace(ns) != nil {
		return "", false
	}
	return ns, true
}

// ValidateNamespace checks a namespace: one subject token.
func ValidateNamespace(ns string) error {
	if !isToken(ns) {
		return fmt.Errorf("%w: namespace %q must be 1-64 characters of A-Z a-z 0-9 _ -", ErrInvalidRequest, ns)
	}
	return nil
}

// RequestKey is the request state key of request id in namespace ns.
func RequestKey(ns, id string) string {
	if ns == "" {
		return id
	}
	return ns + "." + id
}

// NamespaceOfKey is the namespace of request state key key (RequestKey):
// namespaces and request ids have no '.'.
func NamespaceOfKey(key string) string {
	ns, _, ok := strings.Cut(key, ".")
	if !ok {
		return ""
	}
	return ns
}

// ResultSubject is where the result of request id (default namespace) is published.
func ResultSubject(id string) string { return SubjectResultPrefix + id }

// ResultSubjectIn is where the result of request id in namespace ns is published.
func ResultSubjectIn(ns, id string) string { return SubjectResultPrefix + RequestKey(ns, id) }

// ProgressSubject is where progress of request id (default namespace) is published.
func ProgressSubject(id string) string { return SubjectProgressPrefix + id }

// ProgressSubjectIn is where progress of request id in namespace ns is published.
func ProgressSubjectIn(ns, id string) string { return SubjectProgressPrefix + RequestKey(ns, id) }

// TargetSubject is where the assets of requests targeted at host go.
func TargetSubject(host string) string { return SubjectTargetPrefix + host }

// TargetConsumer is the durable consumer of the converter on host.
func TargetConsumer(host string) string { return StageConverter + "_" + host }

// isToken reports whether s is 1-64 characters of A-Z a-z 0-9 _ -: one
// NATS subject token, fit for a durable consumer name. (A loop, not a
// regexp: compiling {1,64} cost every process a few milliseconds at start.)
func isToken(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// ValidateTarget checks a target host name: it becomes a subject token and
// part of a durable consumer name.
func ValidateTarget(host string) error {
	if !isToken(host) {
		return fmt.Errorf("%w: target host %q must be 1-64 characters of A-Z a-z 0-9 _ -", ErrInvalid, host)
	}
	return nil
}

// DoneSubject is where stage publishes its finished or failed assets:
// vmprep.asset.done.<stage>. A converter that reports files on its host
// publishes on DoneSubjectOf(host) instead.
func DoneSubject(stage string) string { return SubjectDone + "." + stage }

// DoneSubjectOf is where the converter on host publishes: only that host's
// converter user may, so a file it names on host is host's own word.
func DoneSubjectOf(host string) string { return DoneSubject(StageConverter) + "." + host }

// DonePublisher reads who published on a done subject: the stage, and for
// a converter on a host, the host. ok is false for any other subject.
func DonePublisher(subject string) (stage, host string, ok bool) {
	rest, found := strings.CutPrefix(subject, SubjectDone+".")
	if !found {
		return "", "", false
	}
	stage, host, _ = strings.Cut(rest, ".")
	switch stage {
	case StageResolver, StageFetcher, StageVerifier:
		return stage, "", host == "" && !strings.Contains(rest, ".")
	case StageConverter:
		if !strings.Contains(rest, ".") {
			return stage, "", true
		}
		return stage, host, isToken(host)
	}
	return "", "", false
}

// DoneWriter is the writer marker (HeaderWriter) on the done events stage
// publishes — on host, for a converter's own host subject (DoneSubjectOf):
// the one party that may publish on that subject. The collector takes a
// done event only with the marker of its subject's publisher, so content
// the server relays there for someone else (a reply subject) is refused.
func DoneWriter(stage, host string) string {
	if host == "" {
		return stage
	}
	return stage + " " + host
}

// DoneWriterOf is the marker a done event on subject must carry
// (DoneWriter of DonePublisher); ok is false for any other subject.
func DoneWriterOf(subject string) (writer string, ok bool) {
	stage, host, ok := DonePublisher(subject)
	if !ok {
		return "", false
	}
	return DoneWriter(stage, host), true
}

// DeadSubject is where a stage publishes its dead letters.
func DeadSubject(stage string) string { return SubjectDeadPrefix + stage }

// ErrUnknownVersion is returned when an event has a schema version this build does not read.
var ErrUnknownVersion = errors.New("unknown message version")

// ErrInvalid is returned for an event that is not well formed.
var ErrInvalid = errors.New("invalid message")

// ValidateRequestID checks that id is safe as a NATS subject token and a KV key.
func ValidateRequestID(id string) error {
	if !isToken(id) {
		return fmt.Errorf("%w: request id %q must be 1-64 characters of A-Z a-z 0-9 _ -", ErrInvalidRequest, id)
	}
	return nil
}

// Fingerprint identifies what a request asks for (spec, format, target,
// client_converts), so that two requests with one id can be told apart.
func (r *PrepareRequest) Fingerprint() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00%s\x00%t", r.Spec.Distro, r.Spec.Version, r.Spec.Arch, r.format(), r.Target, r.ClientConverts)
	if r.Spec.Serial != "" {
		// Only when set, so a request without one keeps its fingerprint.
		fmt.Fprintf(h, "\x00%s", r.Spec.Serial)
	}
	for _, c := range r.Clones {
		fmt.Fprintf(h, "\x00clone\x00%s\x00%s\x00%d\x00%t", c.Name, c.Format, c.Size, c.Force)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func (r *PrepareRequest) format() image.DiskFormat {
	if r.Format == "" {
		return DefaultFormat
	}
	return r.Format
}

// Header is the part every event shares.
type Header struct {
	V    int    `json:"v"`
	Type string `json:"type"`
}

// PrepareRequest asks for an image. Clients choose what image, never which URLs.
type PrepareRequest struct {
	Header
	// RequestID is chosen by the client (or generated by vmprep prepare); the same id
	// published twice yields one result.
	RequestID string     `json:"request_id"`
	Spec      image.Spec `json:"spec"`
	// Format is the disk format wanted: "qcow2" or "raw".
	Format image.DiskFormat `json:"format"`
	// Target, if set, names the host that must end up with the files: the
	// converter started with --target <host> pulls them into its own cache,
	// converts there, and the result names that host and its paths.
	Target string `json:"target,omitempty"`
	// ClientConverts says the requester pulls the verified objects itself and
	// converts locally (what vmprep prepare --nats does): with an object
	// store, the deployment then converts nothing for this request.
	ClientConverts bool `json:"client_converts,omitempty"`
	// Clones, with a Target, asks that host's converter for writable disks
	// made from the disk there, one per VM (see CloneRequest).
	Clones []CloneRequest `json:"clones,omitempty"`
}

// ObjectRef says where verified bytes are in a JetStream Object Store.
type ObjectRef struct {
	Bucket string `json:"bucket"`
	// Name is the object name, the content address: "sha256/<hex>".
	Name string `json:"name"`
	// NUID identifies the object version.
	NUID string `json:"nuid,omitempty"`
	Size int64  `json:"size"`
}

// AssetStatus says how far an asset has come.
type AssetStatus string

// Asset statuses.
const (
	StatusResolved  AssetStatus = "resolved"
	StatusFetched   AssetStatus = "fetched"
	StatusVerified  AssetStatus = "verified"
	StatusConverted AssetStatus = "converted"
	StatusFailed    AssetStatus = "failed"
)

// Resolution source values.
const (
	ResolvedFromNetwork = "network"
	ResolvedFromCache   = "cache"
)

// AssetEvent follows one asset of one request through the stages.
type AssetEvent struct {
	Header
	// Namespace is the requester's namespace (from the prepare subject).
	Namespace string     `json:"namespace,omitempty"`
	RequestID string     `json:"request_id"`
	Spec      image.Spec `json:"spec"`
	// Resolved is the image the request resolved to (canonical version,
	// serial); the images view is linked under it (see Image).
	Resolved *image.Spec      `json:"resolved,omitempty"`
	Format   image.DiskFormat `json:"format"`
	// Roles lists every role the request has, so the collector knows when it is complete.
	Roles []image.Role `json:"roles"`
	// ResolvedFrom is "network" or "cache" (a warm request that used the stored resolution).
	ResolvedFrom string      `json:"resolved_from"`
	Asset        image.Asset `json:"asset"`
	Status       AssetStatus `json:"status"`
	// Target, ClientConverts and Clones are copied from the request.
	Target         string         `json:"target,omitempty"`
	ClientConverts bool           `json:"client_converts,omitempty"`
	Clones         []CloneRequest `json:"clones,omitempty"`
	// Cloned are the clones the target host's converter made (disk).
	Cloned []Clone `json:"cloned,omitempty"`
	// Ingest is the store-relative path of the fetched, not yet verified,
	// bytes (deployments that share one cache directory).
	Ingest string `json:"ingest,omitempty"`
	// Object is where the bytes are in the object store (deployments with
	// --store nats:<bucket>).
	Object *ObjectRef `json:"object,omitempty"`
	// Refetch counts the times a bad object was deleted and fetched again.
	Refetch int `json:"refetch,omitempty"`
	// Host names the host on which Path and View are valid.
	Host string `json:"host,omitempty"`
	// View is the images/<distro>/<version>/<arch>/ directory on Host that
	// links the file (targeted requests).
	View string `json:"view,omitempty"`
	// Blob is the SHA-256 of the verified bytes in the content store.
	Blob digest.Digest `json:"blob,omitzero"`
	// Path is where the final file is (absolute, on Host).
	Path string `json:"path,omitempty"`
	// Size of the final file in bytes.
	Size int64 `json:"size,omitempty"`
	// FileFormat is the format of the file at Path (disk assets).
	FileFormat image.DiskFormat `json:"file_format,omitempty"`
	// Failure is set when Status is "failed".
	Failure *Failure `json:"failure,omitempty"`
}

// Image is the image the event's files belong to: Resolved when set (a
// codename and its version are one image), else Spec.
func (ev *AssetEvent) Image() image.Spec {
	if ev.Resolved != nil {
		return *ev.Resolved
	}
	return ev.Spec
}

// Failure says what went wrong, in words a person can act on.
type Failure struct {
	Stage string `json:"stage"`
	// Code classifies failures a client acts on (FailureRequestIDReused).
	Code      string     `json:"code,omitempty"`
	Asset     image.Role `json:"asset,omitempty"`
	URL       string     `json:"url,omitempty"`
	Cause     string     `json:"cause"`
	Retryable bool       `json:"retryable"`
}

// FailureRequestIDReused is the code of a failed result that answers a
// request whose id already names a request for another image.
const FailureRequestIDReused = "request_id_reused"

func (f *Failure) Error() string {
	s := f.Stage + " failed"
	if f.Asset != "" {
		s += " for the " + string(f.Asset)
	}
	return s + ": " + f.Cause
}

// Progress reports what a stage is doing for a request: bytes done on one
// asset, or a step starting, or a failure about to be retried.
type Progress struct {
	Header
	// Namespace is the requester's namespace.
	Namespace string `json:"namespace,omitempty"`
	RequestID string `json:"request_id"`
	Stage     string `json:"stage"`
	// Step says what the stage is doing: resolve (the request's image, no
	// asset and no counts), fetch, store, verify, pull, convert, unpack or
	// clone (a converter copying a clone the request asked for).
	Step  string     `json:"step,omitempty"`
	Asset image.Role `json:"asset"`
	Done  int64      `json:"done"`
	Total int64      `json:"total"`
	// BytesPerSecond is the recent rate.
	BytesPerSecond float64 `json:"bytes_per_second,omitempty"`
	// Retrying, when set, is the failure the stage is about to retry; Done
	// and Total are then not reported.
	Retrying string `json:"retrying,omitempty"`
	// RetryInSeconds is how long until the retry (with Retrying).
	RetryInSeconds float64 `json:"retry_in_seconds,omitempty"`
	// Attempt is the number of the attempt that comes next and MaxAttempts
	// how many are allowed, when the stage knows (with Retrying).
	Attempt     int `json:"attempt,omitempty"`
	MaxAttempts int `json:"max_attempts,omitempty"`
	// Note, when set, is a remark on the step for the person watching:
	// say, that the cached copy of the file was corrupt and is fetched again.
	Note string `json:"note,omitempty"`
}

// Steps of a request, as Progress.Step names them.
const (
	StepResolve = "resolve"
	StepFetch   = "fetch"
	StepVerify  = "verify"
	StepConvert = "convert"
)

// ResultStatus is the outcome of a request.
type ResultStatus string

// Result statuses.
const (
	ResultPrepared ResultStatus = "prepared"
	ResultFailed   ResultStatus = "failed"
)

// File is one prepared file.
type File struct {
	// Path is the file on Host; empty when the file is only an object.
	Path string `json:"path,omitempty"`
	// Host is the host on which Path is valid.
	Host string `json:"host,omitempty"`
	// Digest is the verified digest of the file as published. It is empty for a
	// derived file (a raw disk converted locally), whose DerivedFrom names the
	// verified source instead.
	Digest      digest.Digest    `json:"digest,omitzero"`
	DerivedFrom digest.Digest    `json:"derived_from,omitzero"`
	Size        int64            `json:"size"`
	Format      image.DiskFormat `json:"format,omitempty"`
	URL         string           `json:"url,omitempty"`
	// Object is where the verified bytes are in the object store, when the
	// deployment has one; Digest (or DerivedFrom) is what they must hash to.
	Object *ObjectRef `json:"object,omitempty"`
}

// Result is the one final answer to a request.
type Result struct {
	Header
	// Namespace is the requester's namespace (see PrepareSubject).
	Namespace string       `json:"namespace,omitempty"`
	RequestID string       `json:"request_id"`
	Status    ResultStatus `json:"status"`
	// Spec is the image as the request named it (normalized).
	Spec image.Spec `json:"spec"`
	// Resolved is the image the request resolved to: the canonical version
	// (a codename's number) and, for catalogs that publish serials, the
	// serial of the build. A later request with this spec gets the same
	// build, even after newer ones are published.
	Resolved *image.Spec `json:"resolved,omitempty"`
	// Format is the disk format the request asked for.
	Format image.DiskFormat `json:"format,omitempty"`
	// Target is the host the request named, if any.
	Target string `json:"target,omitempty"`
	// Host is the host on which View and the paths are valid; empty when
	// the files are only objects (Files[role].Object).
	Host string `json:"host,omitempty"`
	// View is the user-facing directory images/<distro>/<version>/<arch>/ whose
	// links point at the latest prepared files of this image (its "serial"
	// file names their build); the version is the canonical one.
	View string `json:"view,omitempty"`
	// Kernel, Initramfs and Disk are absolute paths of immutable, verified files
	// in the content store; Kernel and Initramfs are empty for firmware-booted
	// images.
	Kernel     string           `json:"kernel,omitempty"`
	Initramfs  string           `json:"initramfs,omitempty"`
	Disk       string           `json:"disk,omitempty"`
	DiskFormat image.DiskFormat `json:"disk_format,omitempty"`
	// Files has each file's path, digest, size and format, by role.
	Files map[image.Role]File `json:"files,omitempty"`
	// Signer is the fingerprint that vouched for the digests, or "" when unsigned.
	Signer   string `json:"signer,omitempty"`
	Unsigned bool   `json:"unsigned,omitempty"`
	// Unpinned is set when the image has serials but the mirror (in the
	// classic layout, only release/) does not say which build it served:
	// Resolved has no serial and the build cannot be asked for again.
	Unpinned     bool   `json:"unpinned,omitempty"`
	ResolvedFrom string `json:"resolved_from,omitempty"`
	// Clones are the clones the request asked for, made on Host.
	Clones []Clone `json:"clones,omitempty"`
	// Failure is set when Status is "failed".
	Failure     *Failure  `json:"failure,omitempty"`
	CompletedAt time.Time `json:"completed_at"`
}

// Image is the image the result's files belong to: Resolved when set, else Spec.
func (r *Result) Image() image.Spec {
	if r.Resolved != nil {
		return *r.Resolved
	}
	return r.Spec
}

// CorruptReport says that a reader found an object version's bytes wrong.
// It is a hint, never trusted: the healer re-reads the object and deletes it
// only if the bytes do not hash to the object's own name (its content
// address).
type CorruptReport struct {
	Header
	Object ObjectRef `json:"object"`
	// Reason is what the reader saw, for logs.
	Reason string `json:"reason,omitempty"`
}

// DeadLetter records a message that could not be processed at all (garbage,
// unknown version, a handler panic), with the reason.
type DeadLetter struct {
	Header
	Stage     string `json:"stage"`
	Subject   string `json:"subject"`
	Reason    string `json:"reason"`
	RequestID string `json:"request_id,omitempty"`
	// Data is the start of the original message (at most DeadLetterDataMax
	// bytes); Size and SHA256 describe all of it.
	Data      []byte    `json:"data"`
	Size      int       `json:"size"`
	SHA256    string    `json:"sha256"`
	Truncated bool      `json:"truncated,omitempty"`
	At        time.Time `json:"at"`
}

// DeadLetterDataMax bounds the original bytes kept in a dead letter, so that a
// dead letter always fits in a NATS message.
const DeadLetterDataMax = 4096

// PeekRequestID reads "request_id" from any JSON object, whatever its version
// or type, so that a requester can be told why its message was refused.
func PeekRequestID(data []byte) (string, bool) {
	if len(data) > maxEventSize {
		return "", false
	}
	var probe struct {
		RequestID string `json:"request_id"`
	}
	if json.Unmarshal(data, &probe) != nil || ValidateRequestID(probe.RequestID) != nil {
		return "", false
	}
	return probe.RequestID, true
}

// PeekRequest reads what it can of a prepare request that Decode refuses (a
// newer schema version, a field of the wrong type): the id, which must be
// valid, and whatever of the spec, format and target parses, so that the
// failed result that answers it echoes what was asked for. A requester
// matching results by spec would otherwise never recognise its answer.
func PeekRequest(data []byte) (PrepareRequest, bool) {
	id, ok := PeekRequestID(data)
	if !ok {
		return PrepareRequest{}, false
	}
	var req PrepareRequest
	// A field of the wrong type is skipped; the others are kept.
	_ = json.Unmarshal(data, &req)
	req.Header = Header{}
	req.RequestID = id
	return req, true
}

// maxEventSize bounds what a stage will try to decode.
const maxEventSize = 1 << 20

// Decode parses data as an event of the wanted type into v, checking the size,
// the version and the type before the body.
func Decode(data []byte, wantType string, v any) error {
	if len(data) > maxEventSize {
		return fmt.Errorf("%w: %d bytes is over the %d-byte limit", ErrInvalid, len(data), maxEventSize)
	}
	var h Header
	if err := json.Unmarshal(data, &h); err != nil {
		return fmt.Errorf("%w: not a JSON event: %v", ErrInvalid, err)
	}
	if h.V != Version {
		return fmt.Errorf("%w: v=%d (this build reads v=%d)", ErrUnknownVersion, h.V, Version)
	}
	if h.Type != wantType {
		return fmt.Errorf("%w: type %q, want %q", ErrInvalid, h.Type, wantType)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalid, wantType, err)
	}
	return nil
}

// Encode stamps the header and marshals an event.
func Encode(typ string, v interface{ setHeader(Header) }) ([]byte, error) {
	v.setHeader(Header{V: Version, Type: typ})
	return json.Marshal(v)
}

func (h *Header) setHeader(v Header) { *h = v }

// ErrInvalidRequest is returned for a prepare request that asks for
// something vmprep cannot do (a disk format it does not make, a bad id).
var ErrInvalidRequest = errors.New("invalid prepare request")

// DefaultFormat is the disk format of a request that names none.
const DefaultFormat = image.FormatQCOW2

// Validate checks a prepare request before any work is done for it. An
// empty Format means DefaultFormat.
func (r *PrepareRequest) Validate() error {
	if err := ValidateRequestID(r.RequestID); err != nil {
		return err
	}
	switch r.Format {
	case image.FormatQCOW2, image.FormatRaw, "":
	default:
		return fmt.Errorf("%w: \"format\": %q is not a disk format vmprep makes: use \"qcow2\" (the default) or \"raw\"", ErrInvalidRequest, r.Format)
	}
	if r.Target != "" && !isToken(r.Target) {
		// The same rule as ValidateTarget's, as a request error: the
		// caller asked for a host that can never exist.
		return fmt.Errorf("%w: target host %q must be 1-64 characters of A-Z a-z 0-9 _ -", ErrInvalidRequest, r.Target)
	}
	return r.validateClones()
}

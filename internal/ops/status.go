package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// ErrNoDeployment means the server has no vmprep streams.
var ErrNoDeployment = errors.New("no vmprep deployment on this NATS server (stream " + messages.StreamWork + " is missing: run `vmprep setup` as the operator, or start vmprep serve)")

// ErrUnknownRequest means no trace of a request id was found.
var ErrUnknownRequest = errors.New("unknown request")

// StreamState is one stream of the deployment.
type StreamState struct {
	Name      string `json:"name"`
	Messages  uint64 `json:"messages"`
	Bytes     uint64 `json:"bytes"`
	Consumers int    `json:"consumers"`
}

// ConsumerState is one stage's durable consumer on the work stream: its backlog.
type ConsumerState struct {
	Name   string `json:"name"`
	Filter string `json:"filter"`
	// Pending messages not yet delivered to any worker.
	Pending uint64 `json:"pending"`
	// AckPending messages delivered and being worked on (or whose worker died,
	// until the ack wait runs out).
	AckPending int `json:"ack_pending"`
	// Redelivered messages among AckPending that are not on their first delivery.
	Redelivered int `json:"redelivered"`
	// Waiting pull requests: idle workers asking for work.
	Waiting int           `json:"waiting"`
	AckWait time.Duration `json:"ack_wait"`
	// Drift says how the consumer differs from what vmprep setup made (a
	// stage's, or a converter host's): its stage takes no work from it
	// until setup restores it.
	Drift []string `json:"drift,omitempty"`
}

// Overview is the deployment at a glance.
type Overview struct {
	Streams   []StreamState   `json:"streams"`
	Consumers []ConsumerState `json:"consumers"`
	// Processes are the live stage processes (see BucketProcesses).
	Processes []Process `json:"processes"`
	// Idle lists consumers that no live process serves.
	Idle []string `json:"idle,omitempty"`
	// Drifted lists consumers that differ from what vmprep setup made.
	Drifted []string `json:"drifted,omitempty"`
	// Stranded are the idle consumers that hold work: requests that will
	// not be answered until a process for that stage starts.
	Stranded []Unconsumed `json:"stranded,omitempty"`
}

// deploymentStream says whether a stream belongs to a vmprep deployment: its
// own streams and buckets, and object stores (named by --store nats:B).
func deploymentStream(name string) bool {
	return strings.HasPrefix(name, "VMPREP_") || strings.HasPrefix(name, "KV_VMPREP_") || strings.HasPrefix(name, "OBJ_")
}

// stageOf names the stage (consumer) a work subject is for.
func stageOf(subject string) string {
	switch subject {
	case messages.SubjectPrepare:
		return messages.StageResolver
	case messages.SubjectFetch:
		return messages.StageFetcher
	case messages.SubjectVerify:
		return messages.StageVerifier
	case messages.SubjectConvert:
		return messages.StageConverter
	}
	if strings.HasPrefix(subject, messages.SubjectDone+".") {
		return messages.StageCollector
	}
	if host, ok := strings.CutPrefix(subject, messages.SubjectTargetPrefix); ok {
		return messages.TargetConsumer(host)
	}
	return subject
}

// GetOverview reads the streams, the work stream's consumers and the live
// processes.
func GetOverview(ctx context.Context, js jetstream.JetStream) (Overview, error) {
	var ov Overview
	work, err := js.Stream(ctx, messages.StreamWork)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return ov, ErrNoDeployment
	}
	if err != nil {
		return ov, fmt.Errorf("stream %s: %w", messages.StreamWork, err)
	}
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		if !deploymentStream(name) {
			continue
		}
		s, err := js.Stream(ctx, name)
		if err != nil {
			continue // deleted meanwhile
		}
		info := s.CachedInfo()
		ov.Streams = append(ov.Streams, StreamState{Name: name, Messages: info.State.Msgs, Bytes: info.State.Bytes, Consumers: info.State.Consumers})
	}
	if err := names.Err(); err != nil {
		return ov, fmt.Errorf("list streams: %w", err)
	}
	slices.SortFunc(ov.Streams, func(a, b StreamState) int { return strings.Compare(a.Name, b.Name) })
	consumers := work.ListConsumers(ctx)
	for info := range consumers.Info() {
		ov.Consumers = append(ov.Consumers, ConsumerState{
			Name: info.Name, Filter: filterOf(info.Config), Pending: info.NumPending, AckPending: info.NumAckPending,
			Redelivered: info.NumRedelivered, Waiting: info.NumWaiting, AckWait: info.Config.AckWait,
		})
		if filters, ok := pipeline.ConsumerFilters(info.Name); ok {
			if d := stage.ConsumerDrift(info.Name, filters, info.Config); len(d) > 0 {
				ov.Consumers[len(ov.Consumers)-1].Drift = d
				ov.Drifted = append(ov.Drifted, info.Name)
			}
		}
	}
	if err := consumers.Err(); err != nil {
		return ov, fmt.Errorf("list consumers of %s: %w", messages.StreamWork, err)
	}
	slices.SortFunc(ov.Consumers, func(a, b ConsumerState) int { return strings.Compare(a.Name, b.Name) })
	slices.Sort(ov.Drifted)
	if ov.Processes, err = Processes(ctx, js); err != nil {
		return ov, fmt.Errorf("live processes: %w", err)
	}
	for _, name := range StageConsumers() {
		if slices.ContainsFunc(ov.Consumers, func(c ConsumerState) bool { return c.Name == name }) {
			continue
		}
		// No process of this stage ever bound: its work waits in the stream.
		u, err := missingConsumer(ctx, js, name)
		if err != nil {
			return ov, err
		}
		if u.Waiting > 0 {
			ov.Stranded = append(ov.Stranded, u)
		}
	}
	for _, c := range ov.Consumers {
		served := slices.ContainsFunc(ov.Processes, func(p Process) bool { return p.Serves(c.Name) })
		if !served {
			ov.Idle = append(ov.Idle, c.Name)
			if c.Pending > 0 || c.AckPending > 0 {
				ov.Stranded = append(ov.Stranded, Unconsumed{Consumer: c.Name, Subject: c.Filter, Waiting: c.Pending + uint64(c.AckPending)})
			}
		}
	}
	return ov, nil
}

// filterOf is a consumer's filter: its one subject, or its subjects
// separated by spaces (the resolver's: vmprep.prepare and vmprep.prepare.>).
func filterOf(c jetstream.ConsumerConfig) string {
	if c.FilterSubject != "" {
		return c.FilterSubject
	}
	return strings.Join(c.FilterSubjects, " ")
}

// AssetState is where one asset of a request is.
type AssetState struct {
	Role image.Role `json:"role"`
	// Status is the asset's last known status (resolved, fetched, verified,
	// converted, failed), or "unknown" when no event about it was found.
	Status messages.AssetStatus `json:"status"`
	// Done is true once the collector has it.
	Done bool `json:"done"`
	// Stage is the stage the asset waits for (or is being worked on by);
	// Subject the work subject its event is in.
	Stage   string `json:"stage,omitempty"`
	Subject string `json:"subject,omitempty"`
	// Object is the object-store copy (multi-host deployments); Path is the
	// file, valid on Host when that is set.
	Object  *messages.ObjectRef `json:"object,omitempty"`
	Host    string              `json:"host,omitempty"`
	Path    string              `json:"path,omitempty"`
	Size    int64               `json:"size,omitempty"`
	URL     string              `json:"url,omitempty"`
	Failure *messages.Failure   `json:"failure,omitempty"`
}

// RequestStatus is one request's state.
type RequestStatus struct {
	RequestID    string           `json:"request_id"`
	Namespace    string           `json:"namespace,omitempty"`
	Spec         image.Spec       `json:"spec"`
	Format       image.DiskFormat `json:"format,omitempty"`
	Target       string           `json:"target,omitempty"`
	ResolvedFrom string           `json:"resolved_from,omitempty"`
	// Queued is true while the prepare request itself waits for the resolver.
	Queued bool         `json:"queued,omitempty"`
	Assets []AssetState `json:"assets"`
	// Result is the request's one result, once published.
	Result *messages.Result `json:"result,omitempty"`
	// RefusedResult says why a stored result was not taken as the
	// collector's (client.ErrResultUnmarked: an older deployment, or a forgery).
	RefusedResult string `json:"refused_result,omitempty"`
	// ScanTruncated: the work stream was too long to search whole.
	ScanTruncated bool `json:"scan_truncated,omitempty"`
}

// requestRecord is the part of a request's KV_VMPREP_REQUESTS entry status
// reads; unknown fields are ignored, so the record may grow.
type requestRecord struct {
	Spec         image.Spec                         `json:"spec"`
	Format       image.DiskFormat                   `json:"format"`
	Target       string                             `json:"target"`
	Roles        []image.Role                       `json:"roles"`
	ResolvedFrom string                             `json:"resolved_from"`
	Done         map[image.Role]messages.AssetEvent `json:"done"`
	Final        *messages.Result                   `json:"final"`
}

// scanLimit bounds how many work messages a status or replay reads.
const scanLimit = 100000

// lastResult returns the stored result of request id in namespace ns, or
// nil: also when the stored one is not the collector's (client.StoredResult),
// then refused says why.
func lastResult(ctx context.Context, js jetstream.JetStream, ns, id string) (res *messages.Result, refused string, err error) {
	data, err := client.StoredResult(ctx, js.Conn(), messages.ResultSubjectIn(ns, id))
	switch {
	case errors.Is(err, client.ErrNoDeployment):
		return nil, "", nil
	case errors.Is(err, client.ErrResultUnmarked):
		return nil, err.Error(), nil
	case err != nil:
		return nil, "", err
	case data == nil:
		return nil, "", nil
	}
	res = new(messages.Result)
	if err := messages.Decode(data, messages.TypeResult, res); err != nil {
		return nil, "", fmt.Errorf("result of %s: %w", id, err)
	}
	return res, "", nil
}

// requestRecordOf reads the KV entry of request id in namespace ns, or nil.
func requestRecordOf(ctx context.Context, js jetstream.JetStream, ns, id string) (*requestRecord, error) {
	kv, err := js.KeyValue(ctx, messages.BucketRequests)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// The resolver's last entry: others can make the server publish onto
	// the key (stage.GetOwned).
	data, _, err := stage.GetOwned(ctx, js.Conn(), kv.Bucket(), messages.RequestKey(ns, id), pipeline.RequestsWriter)
	if errors.Is(err, stage.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rec requestRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("request %s: unreadable state: %w", id, err)
	}
	return &rec, nil
}

// GetRequest gathers the state of request id in namespace ns ("" is the
// default namespace): its KV entry (the assets the collector has), the events
// of it waiting in the work stream, and its result.
func GetRequest(ctx context.Context, js jetstream.JetStream, ns, id string) (RequestStatus, error) {
	st := RequestStatus{RequestID: id, Namespace: ns}
	if err := messages.ValidateRequestID(id); err != nil {
		return st, err
	}
	if ns != "" {
		if err := messages.ValidateNamespace(ns); err != nil {
			return st, err
		}
	}
	work, err := js.Stream(ctx, messages.StreamWork)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return st, ErrNoDeployment
	}
	if err != nil {
		return st, err
	}
	rec, err := requestRecordOf(ctx, js, ns, id)
	if err != nil {
		return st, err
	}
	if st.Result, st.RefusedResult, err = lastResult(ctx, js, ns, id); err != nil {
		return st, err
	}
	assets := map[image.Role]*AssetState{}
	var order []image.Role
	asset := func(r image.Role) *AssetState {
		if a, ok := assets[r]; ok {
			return a
		}
		a := &AssetState{Role: r, Status: "unknown"}
		assets[r] = a
		order = append(order, r)
		return a
	}
	if rec != nil {
		st.Spec, st.Format, st.Target, st.ResolvedFrom = rec.Spec, rec.Format, rec.Target, rec.ResolvedFrom
		for _, r := range rec.Roles {
			asset(r)
		}
		for r, ev := range rec.Done {
			a := asset(r)
			a.Status, a.Done, a.Path, a.Size, a.URL, a.Failure = ev.Status, true, ev.Path, ev.Size, ev.Asset.URL, ev.Failure
			a.Object, a.Host = ev.Object, ev.Host
		}
	}
	found := rec != nil || st.Result != nil
	st.ScanTruncated, err = scan(ctx, work, "vmprep.>", scanLimit, func(m *jetstream.RawStreamMsg) bool {
		if got, ok := messages.PeekRequestID(m.Data); !ok || got != id {
			return true
		}
		if reqNS, isPrepare := messages.NamespaceOf(m.Subject); isPrepare {
			if reqNS != ns {
				return true
			}
			found = true
			st.Queued = true
			var req messages.PrepareRequest
			if messages.Decode(m.Data, messages.TypePrepareRequest, &req) == nil && st.Spec == (image.Spec{}) {
				st.Spec, st.Format = req.Spec, req.Format
			}
			return true
		}
		var ev messages.AssetEvent
		if messages.Decode(m.Data, messages.TypeAsset, &ev) != nil || ev.Namespace != ns {
			return true
		}
		found = true
		if ev.Asset.Role == "" {
			return true
		}
		if st.Spec == (image.Spec{}) {
			st.Spec, st.Format = ev.Spec, ev.Format
		}
		a := asset(ev.Asset.Role)
		if a.Done {
			return true
		}
		a.Status, a.Stage, a.Subject, a.URL, a.Failure = ev.Status, stageOf(m.Subject), m.Subject, ev.Asset.URL, ev.Failure
		if ev.Path != "" {
			a.Path, a.Size = ev.Path, ev.Size
		}
		a.Object, a.Host = ev.Object, ev.Host
		return true
	})
	if err != nil {
		return st, fmt.Errorf("search %s: %w", messages.StreamWork, err)
	}
	if !found {
		where := " in the default namespace (a client's request is NAMESPACE.REQUEST-ID, and a client's namespace is its user name)"
		if ns != "" {
			where = " in namespace " + ns
		}
		return st, fmt.Errorf("%w %s%s: no state, queued work or result (results are kept 7 days)", ErrUnknownRequest, id, where)
	}
	if st.Result != nil && st.Spec == (image.Spec{}) {
		st.Spec, st.Format = st.Result.Spec, st.Result.Format
	}
	for _, r := range order {
		st.Assets = append(st.Assets, *assets[r])
	}
	slices.SortStableFunc(st.Assets, func(a, b AssetState) int { return roleRank(a.Role) - roleRank(b.Role) })
	return st, nil
}

func roleRank(r image.Role) int {
	switch r {
	case image.RoleKernel:
		return 0
	case image.RoleInitramfs:
		return 1
	case image.RoleDisk:
		return 2
	}
	return 3
}

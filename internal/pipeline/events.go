package pipeline

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// assetEvent encodes ev for subject with the deterministic id
// "<request>.<role>.<step>[.r<refetch>]"; on a done subject it carries the
// marker of that subject's publisher (messages.DoneWriterOf).
func assetEvent(subject, step string, ev messages.AssetEvent) (stage.Event, error) {
	data, err := messages.Encode(messages.TypeAsset, &ev)
	if err != nil {
		return stage.Event{}, fmt.Errorf("encode asset event: %w", err)
	}
	role := string(ev.Asset.Role)
	if role == "" {
		role = "request"
	}
	id := messages.RequestKey(ev.Namespace, ev.RequestID) + "." + role + "." + step
	if ev.Refetch > 0 {
		// A re-fetch after a bad object repeats steps: new ids, or the
		// hand-offs would be dropped as duplicates.
		id += ".r" + strconv.Itoa(ev.Refetch)
	}
	out := stage.Event{Subject: subject, Data: data, ID: id}
	// A done event names its publisher: the collector takes none without
	// the marker of its subject's publisher (CollectorStage.Handle).
	out.Writer, _ = messages.DoneWriterOf(subject)
	return out, nil
}

// resultEvent publishes a request's result, marked as the collector's
// (messages.ResultsWriter: clients take no result without it). id tells
// publications apart:
// the collector's decision is "result.<request>" (a redelivery of it is
// deduplicated), an answer to a repeated request message carries that
// message's sequence, so every request message gets its answer.
func resultEvent(res messages.Result, id string) (stage.Event, error) {
	data, err := messages.Encode(messages.TypeResult, &res)
	if err != nil {
		return stage.Event{}, fmt.Errorf("encode result: %w", err)
	}
	return stage.Event{Subject: messages.ResultSubjectIn(res.Namespace, res.RequestID), Data: data, ID: id, Writer: messages.ResultsWriter}, nil
}

// decodeAsset reads an asset event; anything unreadable is poison.
func decodeAsset(m stage.Message) (messages.AssetEvent, error) {
	var ev messages.AssetEvent
	if err := messages.Decode(m.Data, messages.TypeAsset, &ev); err != nil {
		return ev, stage.Poison(err)
	}
	if err := messages.ValidateRequestID(ev.RequestID); err != nil {
		return ev, stage.Poison(err)
	}
	return ev, nil
}

// failureCause words err for a person: the domain errors already name the
// asset, URL and cause; the runner adds how many attempts were made.
func failureCause(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}

// FailurePolicy turns a message that will not be retried into the event that
// ends its request: a failed asset event for the collector on done (the
// stage's own done subject, messages.DoneSubject), or — when the collector
// itself fails — a failed result. A done event the collector refused as
// forged (errRefused) ends nothing: its request is not the sender's to fail.
func FailurePolicy(stageName, done string, logger *slog.Logger) stage.FailureFunc {
	return func(m stage.Message, err error) []stage.Event {
		if errors.Is(err, errRefused) {
			return nil
		}
		// An origin that went silent is given up for this request, not for
		// good: asking again later, when it answers, may work.
		f := &messages.Failure{Stage: stageName, Cause: failureCause(err), Retryable: !stage.IsPermanent(err) || errors.Is(err, ErrOriginGone)}
		ns, isRequest := messages.NamespaceOf(m.Subject)
		switch {
		case isRequest:
			var req messages.PrepareRequest
			if messages.Decode(m.Data, messages.TypePrepareRequest, &req) != nil {
				// An unreadable request (say, a newer schema version) whose id can
				// still be read: its requester hears why instead of waiting
				// forever, in a result that echoes what can be read of its spec.
				var ok bool
				if req, ok = messages.PeekRequest(m.Data); !ok {
					return nil // nobody to tell; the dead letter records it
				}
			}
			if messages.ValidateRequestID(req.RequestID) != nil {
				return nil
			}
			// The result echoes what was asked, target included: a client
			// takes only an answer that does (see client.answers).
			ev, e := assetEvent(done, "failed", messages.AssetEvent{
				Namespace: ns, RequestID: req.RequestID, Spec: req.Spec, Format: req.Format, Status: messages.StatusFailed, Failure: f,
				Target: req.Target, ClientConverts: req.ClientConverts, Clones: req.Clones,
			})
			if e != nil {
				logger.Error("cannot encode failure", "err", e)
				return nil
			}
			return []stage.Event{ev}
		case strings.HasPrefix(m.Subject, messages.SubjectDone+"."):
			var ev messages.AssetEvent
			if messages.Decode(m.Data, messages.TypeAsset, &ev) != nil || messages.ValidateRequestID(ev.RequestID) != nil {
				return nil
			}
			f.Asset = failedRole(err, ev.Asset.Role)
			out, e := resultEvent(messages.Result{
				Namespace: ev.Namespace, RequestID: ev.RequestID, Status: messages.ResultFailed, Spec: ev.Spec, Format: ev.Format, Target: ev.Target,
				Failure: f, CompletedAt: time.Now().UTC(),
			}, "result."+messages.RequestKey(ev.Namespace, ev.RequestID))
			if e != nil {
				return nil
			}
			return []stage.Event{out}
		default:
			var ev messages.AssetEvent
			if messages.Decode(m.Data, messages.TypeAsset, &ev) != nil || messages.ValidateRequestID(ev.RequestID) != nil {
				return nil
			}
			f.Asset, f.URL = ev.Asset.Role, ev.Asset.URL
			ev.Status, ev.Failure = messages.StatusFailed, f
			out, e := assetEvent(done, "failed", ev)
			if e != nil {
				return nil
			}
			return []stage.Event{out}
		}
	}
}

// DeadLetterPolicy records an unprocessable message on the stage's dead-letter subject.
func DeadLetterPolicy(stageName string) stage.DeadLetterFunc {
	return func(m stage.Message, reason string) stage.Event {
		sum := sha256.Sum256(m.Data)
		dl := messages.DeadLetter{
			Stage: stageName, Subject: m.Subject, Reason: reason, At: time.Now().UTC(),
			Data: m.Data, Size: len(m.Data), SHA256: hex.EncodeToString(sum[:]),
		}
		if len(dl.Data) > messages.DeadLetterDataMax {
			dl.Data, dl.Truncated = dl.Data[:messages.DeadLetterDataMax], true
		}
		if len(dl.Reason) > messages.DeadLetterDataMax {
			dl.Reason = dl.Reason[:messages.DeadLetterDataMax]
		}
		dl.RequestID, _ = messages.PeekRequestID(m.Data)
		data, err := messages.Encode(messages.TypeDeadLetter, &dl)
		if err != nil {
			data = []byte(`{"v":1,"type":"dead_letter","reason":"unencodable"}`)
		}
		return stage.Event{Subject: messages.DeadSubject(stageName), Data: data, ID: "dead." + stageName + "." + m.Subject + "." + dl.SHA256[:24]}
	}
}

// errNoAsset marks an asset event with no role where one is needed.
var errNoAsset = errors.New("asset event has no asset role")

func validRole(r image.Role) bool {
	switch r {
	case image.RoleKernel, image.RoleInitramfs, image.RoleDisk:
		return true
	}
	return false
}

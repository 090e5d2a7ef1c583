package pipeline

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Class is what a handler's error means for the message it was handling.
type Class int

const (
	// Retry: the failure may pass (a dropped connection, a busy server, NATS
	// away, a full disk that GC may free). The message is delivered again,
	// up to the runner's MaxDeliver.
	Retry Class = iota
	// Permanent: another delivery would fail the same way (a 404, content
	// that does not match its digest, a malformed image). The request fails now.
	Permanent
	// Poison: the message itself cannot be processed (unreadable, unknown
	// schema). It is dead-lettered, and its requester is told when known.
	Poison
)

func (c Class) String() string {
	switch c {
	case Retry:
		return "retry"
	case Permanent:
		return "permanent"
	case Poison:
		return "poison"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// permanence is how a domain package says whether one of its errors can
// pass with time. The domain packages know nothing of the pipeline; their
// error types just have the method: *download.Error, *resolve.Error,
// *store.SpaceError, *store.MismatchError, *qcow2.FormatError,
// *qcow2.FeatureError, *qcow2.MalformedError, *kernel.Error.
type permanence interface{ Permanent() bool }

// Classify is the one place that decides whether an error from a handler is
// retried. In order:
//   - what the handler marked (stage.Poison, stage.Permanent), for facts only
//     it knows: an unreadable event, a blob that should be in the store;
//   - a context that ended (a drain, a deadline) is Retry, whatever wraps it:
//     the work was cut short, not refused;
//   - the first error in the chain that says, through Permanent(), whether it
//     can pass (the outermost knows most: a download error that gave up on
//     a short body wraps the retryable EOF);
//   - EFBIG: the file system cannot hold a file that large (a raw disk of
//     1 PiB on ext4), however much space is freed;
//   - anything else (I/O, NATS) is Retry, bounded by MaxDeliver.
func Classify(err error) Class {
	var p permanence
	switch {
	case err == nil:
		return Retry
	case stage.IsPoison(err):
		return Poison
	case stage.IsPermanent(err):
		return Permanent
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Retry
	case errors.As(err, &p):
		if p.Permanent() {
			return Permanent
		}
		return Retry
	case errors.Is(err, syscall.EFBIG):
		return Permanent
	}
	return Retry
}

// classified runs h and marks its errors with their Class for the runner,
// so that handlers return domain errors as they are.
func classified(h stage.Handler) stage.Handler {
	return func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		events, err := h(ctx, m)
		if err != nil && Classify(err) == Permanent && !stage.IsPermanent(err) {
			err = stage.Permanent(err)
		}
		return events, err
	}
}

// failedRole is the asset err is about (an *assetError: the collector
// handling the initramfs's event may fail to link the disk), else the
// message's own.
func failedRole(err error, own image.Role) image.Role {
	var ae *assetError
	if errors.As(err, &ae) {
		return ae.Role
	}
	return own
}

// reportRetry tells the requester what the fetcher is retrying, so that a
// client that gives up (a --timeout) can say why it was waiting.
func (s *FetcherStage) reportRetry(ns, id string, role image.Role, r download.Retry) {
	if s.Progress != nil {
		// The download's own count: failures in a row without progress.
		s.Progress(messages.Progress{Namespace: ns, RequestID: id, Stage: messages.StageFetcher, Step: messages.StepFetch, Asset: role, Retrying: r.Err.Error(),
			RetryInSeconds: r.In.Seconds(), Attempt: r.Failures + 1, MaxAttempts: r.MaxFailures})
	}
}

// retryProgress tells the requester of a message the runner hands back for
// another delivery what failed and when it is tried again.
func retryProgress(stageName string, progress ProgressFunc) func(stage.Retry) {
	step := map[string]string{
		messages.StageResolver: messages.StepResolve, messages.StageFetcher: messages.StepFetch,
		messages.StageVerifier: messages.StepVerify, messages.StageConverter: messages.StepConvert,
	}[stageName]
	return func(r stage.Retry) {
		id, ok := messages.PeekRequestID(r.Message.Data)
		if !ok {
			return
		}
		p := messages.Progress{RequestID: id, Stage: stageName, Step: step, Retrying: r.Err.Error(),
			RetryInSeconds: r.In.Seconds(), Attempt: r.Next, MaxAttempts: r.Max}
		if ns, isRequest := messages.NamespaceOf(r.Message.Subject); isRequest {
			p.Namespace = ns
		} else {
			var ev messages.AssetEvent
			if messages.Decode(r.Message.Data, messages.TypeAsset, &ev) != nil {
				return
			}
			p.Namespace, p.Asset = ev.Namespace, ev.Asset.Role
		}
		progress(p)
	}
}

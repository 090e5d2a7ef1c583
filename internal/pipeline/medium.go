package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Medium is where an asset's bytes live between the fetcher and the
// converter, and so where its events go: the one thing a deployment mode
// changes. NewStages picks one, from Deps.ObjectBucket: sharedCache (every
// process mounts one cache) or objectStore (verified bytes in a JetStream
// Object Store, each host with its own cache). The handlers call it and
// never ask which it is; a new mode is a new implementation and one line
// of wiring.
//
// A request's own placement fields (Target, ClientConverts, Clones) are
// read here too, because what they mean depends on the mode: Accept says
// whether the mode can carry them, Next and Place act on them.
type Medium interface {
	// Accept refuses (permanently) a request this mode cannot carry, such
	// as a target other than host when every file is on host.
	Accept(req messages.PrepareRequest, host string) error
	// Fetch brings the asset's bytes to the medium, downloading them
	// through f only if nobody has, and says in ev where the verifier
	// finds them (ev.Ingest, or ev.Object).
	Fetch(ctx context.Context, f *FetcherStage, ev *messages.AssetEvent, log *slog.Logger) error
	// Verify checks the fetched bytes against ev.Asset.Digest itself and
	// publishes them, filling in ev (Blob, Path or Object, Size,
	// FileFormat); it reports whether a kernel is packed. Bytes found bad
	// or gone are a *refetchError: the asset goes back to the fetcher.
	Verify(ctx context.Context, v *VerifierStage, ev *messages.AssetEvent, log *slog.Logger) (kernelPacked bool, err error)
	// Next is where a verified asset goes, and the step's name: the
	// target host's converter, a converter when convert, or done.
	Next(ctx context.Context, ev messages.AssetEvent, convert bool) (subject, step string, err error)
	// Local is the verified blob in this host's store (found, or pulled
	// through p); it refuses an event that names no verified bytes here.
	Local(ctx context.Context, c *ConverterStage, p *place.Placer, ev messages.AssetEvent, log *slog.Logger) (content.BlobInfo, error)
	// Place finishes a converted or pulled file at path on c's host: the
	// request's clones of its disk, and where the result says it is
	// (ev.Host, ev.View); view is its name in the images view.
	Place(ctx context.Context, c *ConverterStage, ev *messages.AssetEvent, view, path string, report ProgressFunc) error
	// Converter is how host's converter is bound: the consumers it takes
	// work from (targetedOnly: only work targeted at host, where the mode
	// has such work) and the subject it reports on.
	Converter(host string, targetedOnly bool) (consumers []StageConsumer, done string)

	// Admit is the collector's check of who reports request st's finished
	// asset, or its failure, and of where it says the bytes are, against
	// the route this mode gives the request: pub is the reporting stage,
	// host set when it reported on its host's own subject
	// (messages.DonePublisher). A finished asset has passed the checks that
	// hold in every mode (its asset is the resolution's, its format the
	// published or the converted one). A refusal is refuse(...).
	Admit(st *requestState, pub, host string, ev messages.AssetEvent) error
	// Collect is where an admitted finished asset's file is, as the result
	// names it; img is the resolved image, whose view may link it.
	Collect(ctx context.Context, s *CollectorStage, img image.Spec, ev messages.AssetEvent) (collected, error)
	// Maintain is the mode's own work in a process running stage name, if
	// any: handlers on consumers of their own, and loops that run as long
	// as the stages.
	Maintain(name string, d Deps, log *slog.Logger) maintenance
}

// collected is where a finished asset's file is, as the result names it
// (Medium.Collect): Path on Host ("": named only by its object), in the
// images view View; Linked says the collector linked it there itself (and
// so stamps the view's serial and roots).
type collected struct {
	Path, Host, View string
	Linked           bool
}

// maintenance is a mode's own work beside a stage (Medium.Maintain).
type maintenance struct {
	Handlers []maintenanceHandler
	Loops    []func(context.Context)
}

// maintenanceHandler is a handler bound to a consumer of its own, filtered
// on one subject; its failures are reported as the stage's.
type maintenanceHandler struct {
	Consumer, Filter string
	Handler          stage.Handler
}

// refetchError: the fetched bytes were found bad (and removed) or gone, so
// the asset is fetched again (see refetch).
type refetchError struct{ err error }

func (e *refetchError) Error() string { return "fetch again: " + e.err.Error() }
func (e *refetchError) Unwrap() error { return e.err }

// newMedium is the deployment's medium, the one place a mode is chosen: an
// object store when setup opened one (Deps.ObjectBucket), else the shared
// cache.
func newMedium(nc *nats.Conn, js jetstream.JetStream, infra *Infra, d Deps) Medium {
	if infra.Objects == nil {
		return sharedCache{nc: nc}
	}
	// The holder tells operators (and other fetchers' logs) who is
	// downloading: a fetcher has no --target, and in a container its pid
	// is 1, so the host name is what names it.
	holder := d.Host
	if holder == "" {
		holder, _ = os.Hostname()
	}
	return &objectStore{
		objects:  infra.Objects,
		leases:   infra.leasesFor(holder+"/"+strconv.Itoa(os.Getpid()), leaseStall(d)),
		verified: newVerifiedObjects(nc, infra.Verified),
		targetKnown: func(ctx context.Context, host string) (bool, error) {
			_, err := js.Consumer(ctx, messages.StreamWork, messages.TargetConsumer(host))
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				return false, nil
			}
			return err == nil, err
		},
	}
}

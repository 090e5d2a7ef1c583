package pipeline

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/clone"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// errRefused marks a done event the collector will not take: it disagrees
// with the request's recorded resolution, or its publisher cannot say what
// it says. Every stage user may publish a done event, so a compromised
// stage could otherwise forge anyone's result; a refused event is
// dead-lettered with the reason and changes nothing.
var errRefused = errors.New("done event refused")

func refuse(format string, args ...any) error {
	return stage.Poison(fmt.Errorf("%w: "+format, append([]any{errRefused}, args...)...))
}

// admit checks a done event against who published it (its subject,
// messages.DonePublisher) and the request's state, which only the resolver
// user may write: the resolution in it is the one the resolver verified.
// st is nil when no state is recorded. It returns the event to record,
// whose asset and image come from the resolution, not from the event.
//
// How far this goes: a success must agree with the resolution in every
// field a result takes from it (digest, name, URL, signer, image, format)
// and come from the stage that produces it — a file on a host only from that
// host's converter subject. A failure only has to come from a stage that
// could have had the asset (any stage, for a request the resolver never
// recorded): any stage can stall a request by dropping its work anyway, so
// a forged failure is a denial of service, never a result.
func (s *CollectorStage) admit(subject string, st *requestState, ev messages.AssetEvent) (messages.AssetEvent, error) {
	pub, host, ok := messages.DonePublisher(subject)
	if !ok {
		return ev, refuse("subject %q is no stage's done subject", subject)
	}
	if ev.Namespace != "" && messages.ValidateNamespace(ev.Namespace) != nil {
		return ev, refuse("namespace %q is not a namespace", ev.Namespace)
	}
	from := "the " + pub
	if host != "" {
		from += " on " + host
	}
	if st != nil && ev.Namespace != st.Namespace {
		return ev, refuse("namespace %q from %s: the request is in %q", ev.Namespace, from, st.Namespace)
	}
	if ev.Status == messages.StatusFailed {
		return ev, s.admitFailure(pub, host, from, st, ev)
	}

	switch {
	case ev.Status != messages.StatusVerified && ev.Status != messages.StatusConverted:
		return ev, refuse("status %q from %s is not a finished asset", ev.Status, from)
	case pub != messages.StageVerifier && pub != messages.StageConverter:
		return ev, refuse("status %q from %s: only the verifier and converters finish assets", ev.Status, from)
	case ev.Status == messages.StatusConverted && pub != messages.StageConverter:
		return ev, refuse("status %q from %s: only converters convert", ev.Status, from)
	case st == nil || st.Resolution == nil:
		return ev, refuse("%s from %s: request %s has no recorded resolution", ev.Status, from, messages.RequestKey(ev.Namespace, ev.RequestID))
	}
	res := st.Resolution
	a, ok := res.Asset(ev.Asset.Role)
	if !ok {
		return ev, refuse("role %q from %s: the resolution of %s has no such asset", ev.Asset.Role, from, specString(res.Spec))
	}
	switch {
	case ev.Asset.Digest != a.Digest:
		return ev, refuse("%s digest %s from %s: the resolution has %s", a.Role, ev.Asset.Digest, from, a.Digest)
	case ev.Asset.Trust.Signer != a.Trust.Signer || ev.Asset.Trust.Signed != a.Trust.Signed:
		return ev, refuse("%s signer %q from %s: the resolution has %q", a.Role, ev.Asset.Trust.Signer, from, a.Trust.Signer)
	case ev.Asset.Name != a.Name || ev.Asset.URL != a.URL:
		return ev, refuse("%s name %q (%s) from %s: the resolution has %q (%s)", a.Role, ev.Asset.Name, ev.Asset.URL, from, a.Name, a.URL)
	case ev.Asset != a:
		return ev, refuse("%s from %s differs from the resolution's asset", a.Role, from)
	case ev.Resolved != nil && *ev.Resolved != res.Spec:
		return ev, refuse("resolved build %s from %s: the request resolved to %s", specString(*ev.Resolved), from, specString(res.Spec))
	case ev.Spec != st.Spec || ev.Format != st.Format || ev.Target != st.Target || ev.ClientConverts != st.ClientConverts || !slices.Equal(ev.Clones, st.Clones):
		return ev, refuse("%s from %s is for another request than the one recorded (image, format, target, client_converts or clones differ)", a.Role, from)
	case ev.Status == messages.StatusVerified && a.Size > 0 && ev.Size != a.Size:
		return ev, refuse("%s size %d from %s: the resolution has %d", a.Role, ev.Size, from, a.Size)
	}
	if err := s.admitPlace(st, a, pub, host, from, ev); err != nil {
		return ev, err
	}
	if err := s.admitFormat(st, a, from, ev); err != nil {
		return ev, err
	}
	if err := admitClones(st, a, host, from, ev); err != nil {
		return ev, err
	}
	// What the result says about the file comes from the resolution.
	ev.Asset, ev.Resolved, ev.Roles = a, &res.Spec, st.Roles
	return ev, nil
}

// admitFormat checks the disk format a finished asset claims: the format
// published, or what the request asked for once converted.
func (s *CollectorStage) admitFormat(st *requestState, a image.Asset, from string, ev messages.AssetEvent) error {
	if a.Role != image.RoleDisk {
		if ev.FileFormat != "" {
			return refuse("%s from %s has a disk format %q", a.Role, from, ev.FileFormat)
		}
		return nil
	}
	want := a.Format
	if ev.Status == messages.StatusConverted {
		want = st.Format
	}
	if ev.FileFormat != want {
		return refuse("disk format %q (%s) from %s: expected %q", ev.FileFormat, ev.Status, from, want)
	}
	// The requester converts itself only from objects; otherwise the
	// disk must be what it asked for.
	if !(s.Bucket != "" && st.ClientConverts) && ev.FileFormat != st.Format {
		return refuse("disk format %q from %s: the request asked for %q", ev.FileFormat, from, st.Format)
	}
	return nil
}

// admitClones checks the clones a finished disk reports: exactly those the
// request asked for, each a file of that name on the target host, by a
// method and in a format a clone can have — and only from the target host's
// converter (admitPlace has checked that host speaks for it).
func admitClones(st *requestState, a image.Asset, host, from string, ev messages.AssetEvent) error {
	if len(ev.Cloned) == 0 && (a.Role != image.RoleDisk || len(st.Clones) == 0) {
		return nil
	}
	switch {
	case a.Role != image.RoleDisk:
		return refuse("%s from %s reports clones; only a disk has them", a.Role, from)
	case host == "" || host != st.Target:
		return refuse("clones from %s: only the target host's converter makes them", from)
	case len(ev.Cloned) != len(st.Clones):
		return refuse("%d clones from %s: the request asked for %d", len(ev.Cloned), from, len(st.Clones))
	}
	for i, c := range ev.Cloned {
		want := st.Clones[i]
		switch clone.Method(c.Method) {
		case clone.MethodReflink, clone.MethodClonefile, clone.MethodOverlay, clone.MethodCopy:
		default:
			return refuse("clone %q from %s: method %q is not a clone method", c.Name, from, c.Method)
		}
		switch {
		case c.Name != want.Name || !filepath.IsAbs(c.Path) || filepath.Base(c.Path) != c.Name:
			return refuse("clone %q at %q from %s: the request asked for %q", c.Name, c.Path, from, want.Name)
		case c.Format != messages.CloneFormat(want, st.Format) || (c.Method == string(clone.MethodOverlay)) != (c.Format == image.FormatQCOW2):
			return refuse("clone %q from %s: %s by %s, the request asked for %s", c.Name, from, c.Format, c.Method, messages.CloneFormat(want, st.Format))
		}
	}
	return nil
}

// admitPlace checks where a finished asset says its bytes are, against the
// route the pipeline gives it (see Medium.Next): with an object store, an object
// named by the resolution's digest, and a file on a host only from that
// host's converter; in one shared cache, nothing the collector would not
// find in its own store.
func (s *CollectorStage) admitPlace(st *requestState, a image.Asset, pub, host, from string, ev messages.AssetEvent) error {
	if s.Bucket == "" {
		switch {
		case ev.Object != nil || ev.Host != "":
			return refuse("%s from %s names an object or a host; this deployment has one shared cache", a.Role, from)
		case host != "":
			return refuse("%s from %s: this deployment has one shared cache and no per-host converters", a.Role, from)
		}
		return nil
	}
	if o := ev.Object; o == nil || o.Bucket != s.Bucket || o.Name != objectstore.Name(a.Digest) || (a.Size > 0 && o.Size != a.Size) {
		return refuse("%s from %s: its object %+v is not %s in bucket %s", a.Role, from, ev.Object, objectstore.Name(a.Digest), s.Bucket)
	}
	switch {
	case ev.Host != "" && ev.Host != host:
		return refuse("%s on host %q from %s: only that host's converter says what is on it", a.Role, ev.Host, from)
	case host != "" && (ev.Host != host || ev.Path == ""):
		return refuse("%s from %s names no file on its host", a.Role, from)
	case pub == messages.StageConverter && host == "":
		return refuse("%s from %s: with an object store converters report from their host's subject", a.Role, from)
	case st.Target != "" && host != st.Target:
		return refuse("%s from %s: the request is targeted at %s, whose converter places it", a.Role, from, st.Target)
	case st.Target == "" && st.ClientConverts && pub != messages.StageVerifier:
		return refuse("%s from %s: the requester converts itself; only the verifier finishes its assets", a.Role, from)
	}
	return nil
}

// admitFailure checks that a failure comes from a stage that could have had
// the request's work.
func (s *CollectorStage) admitFailure(pub, host, from string, st *requestState, ev messages.AssetEvent) error {
	if ev.Failure != nil && ev.Failure.Stage != pub {
		return refuse("failure of stage %q from %s", ev.Failure.Stage, from)
	}
	if st == nil {
		// A request the resolver never recorded: its failure may come from
		// any stage (an unreadable asset event whose request id can be
		// read still tells its requester). It can only fail that id.
		return nil
	}
	if ev.Asset.Role != "" && st.Resolution != nil {
		if _, ok := st.Resolution.Asset(ev.Asset.Role); !ok {
			return refuse("failure of role %q from %s: the resolution has no such asset", ev.Asset.Role, from)
		}
	}
	if pub != messages.StageConverter {
		return nil
	}
	switch {
	case s.Bucket == "" && host != "":
		return refuse("failure from %s: this deployment has no per-host converters", from)
	case s.Bucket != "" && host == "":
		return refuse("failure from %s: with an object store converters report from their host's subject", from)
	case s.Bucket != "" && st.Target != "" && host != st.Target:
		return refuse("failure from %s: the request is targeted at %s", from, st.Target)
	case s.Bucket != "" && st.Target == "" && st.ClientConverts:
		return refuse("failure from %s: the requester converts itself; no converter had the request", from)
	}
	return nil
}

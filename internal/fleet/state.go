package fleet

import (
	"fmt"
	"slices"
	"time"

	"github.com/vmprep/vmprep/pkg/image"
)

// Build is the build a following selection is at: the newest serial the
// sync found and whose signed manifest the resolver verified.
type Build struct {
	Serial string `json:"serial,omitempty"`
	// CheckedAt is when the sync last looked (whether or not it found a new build).
	CheckedAt time.Time `json:"checked_at"`
	// VerifiedAt is when Serial was first verified.
	VerifiedAt time.Time `json:"verified_at,omitzero"`
	// Err says why the last look failed; Serial stays what it was.
	Err string `json:"error,omitempty"`
}

// State is how far a host is with one selection.
type State string

// Host states per selection.
const (
	// StateWaiting: the selection matches the host, which has not been
	// given a build yet (the rollout has not reached it, or there is none).
	StateWaiting State = "waiting"
	// StatePulling: the host is getting the build it was given.
	StatePulling State = "pulling"
	// StateReady: the host holds the build: files and view in place.
	StateReady State = "ready"
	// StateFailed: the last attempt failed (Cause says why); it is retried.
	StateFailed State = "failed"
)

// Status is what a host reports for one selection.
type Status struct {
	// Serial is the build the host is at (ready) or moving to (pulling, failed).
	Serial string `json:"serial,omitempty"`
	State  State  `json:"state"`
	Cause  string `json:"cause,omitempty"`
	// Held is the serial the host holds ready, which may differ from
	// Serial while it moves to a new one.
	Held string `json:"held,omitempty"`
	// Bytes is the size of the files of Held on the host.
	Bytes int64 `json:"bytes,omitempty"`
	// Since is when State began.
	Since time.Time `json:"since"`
	// Kept lists the builds kept besides Held, newest first, and why.
	Kept []Kept `json:"kept,omitempty"`
}

// Kept is a build a host keeps that is not the current one.
type Kept struct {
	Serial string `json:"serial"`
	Why    string `json:"why"`
}

// String renders a status cell: "ready 20240101", "failed: cause".
func (s Status) String() string {
	switch s.State {
	case StateFailed:
		return fmt.Sprintf("failed %s: %s", s.Serial, s.Cause)
	case StateWaiting:
		if s.Held != "" {
			return "ready " + s.Held
		}
		return string(s.State)
	default:
		return fmt.Sprintf("%s %s", s.State, s.Serial)
	}
}

// Desired is one image a host must hold: the selection's ID and policy,
// and the build the rollout gave this host.
type Desired struct {
	Selection string           `json:"selection"`
	Spec      image.Spec       `json:"spec"`
	Format    image.DiskFormat `json:"format"`
	Keep      int              `json:"keep"`
}

// Plan is everything one host must hold, as the coordinator decided it.
type Plan struct {
	Host    string    `json:"host"`
	Desired []Desired `json:"desired"`
	// Pinned are the serials any selection for an image this host holds
	// names: never freed while named.
	Pinned []image.Spec `json:"pinned,omitempty"`
}

// Assigned is the serial plan gives selection id, if any.
func (p Plan) Assigned(id string) (string, bool) {
	for _, d := range p.Desired {
		if d.Selection == id {
			return d.Spec.Serial, true
		}
	}
	return "", false
}

// Progress is where a selection's rollout stands.
type Progress struct {
	Target string `json:"target,omitempty"`
	// Hosts matching the selection, and how many hold Target, are moving
	// to it, failed to take it, or have not been given it yet.
	Hosts   int  `json:"hosts"`
	Done    int  `json:"done"`
	Moving  int  `json:"moving"`
	Failed  int  `json:"failed"`
	Waiting int  `json:"waiting"`
	Paused  bool `json:"paused,omitempty"`
}

// Phase says in words where the rollout stands.
func (p Progress) Phase() string {
	switch {
	case p.Target == "":
		return "no build yet"
	case p.Paused:
		return fmt.Sprintf("paused: %d failed (%d/%d done)", p.Failed, p.Done, p.Hosts)
	case p.Done == p.Hosts:
		return fmt.Sprintf("complete (%d/%d)", p.Done, p.Hosts)
	default:
		return fmt.Sprintf("rolling out: %d/%d done, %d moving, %d waiting", p.Done, p.Hosts, p.Moving, p.Waiting)
	}
}

// Target is the serial a selection's hosts must end at: its pin, else the
// build the sync recorded ("" when none is known yet).
func Target(sel Selection, build Build) string {
	if sel.Pinned() {
		return sel.Serial
	}
	return build.Serial
}

// Rollout decides the serial each of hosts (those the selection matches,
// in any order) is given now, from the serials they were given before
// (assigned) and what they report (status). A host given Target that does
// not yet report it ready is moving; one that reports it failed counts
// against MaxFailed. New hosts are admitted while fewer than MaxParallel
// move, canary hosts first and the others once every canary holds Target;
// nothing is admitted while the rollout is paused. A host not admitted
// keeps the serial it had (possibly none). The choice is deterministic
// (hosts by name), so coordinators that see the same state agree.
func Rollout(sel Selection, target string, hosts []string, assigned map[string]string, status map[string]Status) (map[string]string, Progress) {
	hosts = slices.Clone(hosts)
	slices.Sort(hosts)
	next := make(map[string]string, len(hosts))
	prog := Progress{Target: target, Hosts: len(hosts)}
	var canaries, others []string
	canariesDone := true
	for _, h := range hosts {
		next[h] = assigned[h]
		if target == "" {
			prog.Waiting++
			continue
		}
		st := status[h]
		switch {
		case assigned[h] == target && st.Serial == target && st.State == StateReady:
			prog.Done++
			continue
		case assigned[h] == target && st.Serial == target && st.State == StateFailed:
			prog.Failed++
		case assigned[h] == target:
			prog.Moving++
		default:
			prog.Waiting++
			if sel.IsCanary(h) {
				canaries = append(canaries, h)
			} else {
				others = append(others, h)
			}
		}
		if sel.IsCanary(h) {
			canariesDone = false
		}
	}
	if target == "" {
		return next, prog
	}
	if sel.MaxFailed > 0 && prog.Failed >= sel.MaxFailed {
		prog.Paused = true
		return next, prog
	}
	candidates := canaries
	if canariesDone {
		candidates = append(candidates, others...)
	}
	slots := len(candidates)
	if sel.MaxParallel > 0 {
		// Failed hosts hold their slot: they are retried, not replaced.
		slots = min(slots, max(0, sel.MaxParallel-prog.Moving-prog.Failed))
	}
	for _, h := range candidates[:slots] {
		next[h] = target
		prog.Waiting--
		prog.Moving++
	}
	return next, prog
}

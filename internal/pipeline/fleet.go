package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/fleetkv"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// DefaultSyncInterval is how often the resolver looks for new builds of
// the followed selections.
const DefaultSyncInterval = time.Hour

// fleetAttempt bounds one attempt of a host to hold a build.
const fleetAttempt = time.Hour

// replanInterval bounds how long a plan waits when a status change was
// missed (the coordinator also replans on every change it hears of).
const replanInterval = 10 * time.Second

// FleetCoordinator runs in the resolver process: it looks for new builds
// of the followed selections (every SyncInterval and when `vmprep fleet
// sync` asks), records each selection's build once its signed manifest is
// verified, and writes every host's plan from the selections, builds and
// host states (fleet.Plans: the rollouts).
type FleetCoordinator struct {
	Fleet *fleetkv.Store
	Conn  *nats.Conn
	// Newest resolves the newest build of an image (ResolverStage.Newest).
	Newest       func(ctx context.Context, spec image.Spec) (catalog.Resolution, error)
	SyncInterval time.Duration
	Logger       *slog.Logger
	// Observe, if set, is told each selection's rollout progress and the
	// host states after every plan.
	Observe func(fleet.Fleet, map[string]fleet.Progress)
}

// Run serves until ctx ends.
func (c *FleetCoordinator) Run(ctx context.Context) {
	syncNow := make(chan struct{}, 1)
	replanNow := make(chan struct{}, 1)
	poke := func(ch chan struct{}) func() {
		return func() {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	if sub, err := c.Conn.Subscribe(fleetkv.SubjectSync, func(*nats.Msg) { poke(syncNow)() }); err != nil {
		c.Logger.Warn("cannot hear `vmprep fleet sync`; looking for new builds on the interval only", "err", err)
	} else {
		defer sub.Unsubscribe() //nolint:errcheck
	}
	if subs, err := c.Fleet.WatchStatus(poke(replanNow)); err != nil {
		c.Logger.Warn("cannot watch host states; replanning every "+replanInterval.String(), "err", err)
	} else {
		for _, s := range subs {
			defer s.Unsubscribe() //nolint:errcheck
		}
	}
	interval := c.SyncInterval
	if interval <= 0 {
		interval = DefaultSyncInterval
	}
	syncTick := time.NewTicker(interval)
	defer syncTick.Stop()
	replanTick := time.NewTicker(replanInterval)
	defer replanTick.Stop()
	c.sync(ctx)
	for {
		c.replan(ctx)
		select {
		case <-ctx.Done():
			return
		case <-syncTick.C:
			c.sync(ctx)
		case <-syncNow:
			c.sync(ctx)
		case <-replanNow:
		case <-replanTick.C:
		}
	}
}

// sync looks for the newest build of every followed selection once (one
// resolution per image, however many selections name it).
func (c *FleetCoordinator) sync(ctx context.Context) {
	st, skipped, err := c.Fleet.Load(ctx)
	if err != nil {
		c.Logger.Warn("fleet sync: cannot read the selections", "err", err)
		return
	}
	for _, s := range skipped {
		c.Logger.Warn("fleet: unreadable entry skipped", "entry", s)
	}
	type found struct {
		serial string
		err    error
	}
	seen := map[image.Spec]found{}
	for _, sel := range st.Selections {
		if sel.Pinned() {
			continue
		}
		f, ok := seen[sel.Spec()]
		if !ok {
			res, err := c.Newest(ctx, sel.Spec())
			f = found{res.Spec.Serial, err}
			if err == nil && res.Spec.Serial == "" {
				f.err = errors.New("the mirror does not say which build it serves (only release/): a selection needs the build directories")
			}
			seen[sel.Spec()] = f
		}
		id := sel.ID()
		b := st.Builds[id]
		b.CheckedAt = time.Now().UTC()
		b.Err = ""
		switch {
		case f.err != nil:
			b.Err = f.err.Error()
			c.Logger.Warn("fleet sync: cannot resolve the newest build", "selection", sel.String(), "err", f.err)
		case f.serial != b.Serial:
			c.Logger.Info("fleet sync: new build", "selection", sel.String(), "serial", f.serial, "was", b.Serial)
			b.Serial, b.VerifiedAt = f.serial, b.CheckedAt
		}
		if err := c.Fleet.PutBuild(ctx, id, b); err != nil {
			c.Logger.Warn("fleet sync: cannot record the build", "selection", sel.String(), "err", err)
		}
	}
}

// replan writes every announced host's plan that changed.
func (c *FleetCoordinator) replan(ctx context.Context) {
	st, _, err := c.Fleet.Load(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.Logger.Warn("fleet: cannot read the fleet state", "err", err)
		}
		return
	}
	// What a tampered key held is unknown, not gone. Planning without a
	// selection would make its hosts free its builds: keep every plan
	// until the operator writes it again (vmprep fleet want|apply). The
	// other keys cannot take a selection out of a plan: without a host's
	// announcement its plan is left as it is, without a build or a status
	// each host keeps the serial it was given, and plans and builds are the
	// resolver's own, written again here and by sync.
	if sels := slices.DeleteFunc(slices.Clone(st.Tampered), func(k string) bool { return !strings.HasPrefix(k, fleetkv.SelectionKey("")) }); len(sels) > 0 {
		c.Logger.Error("fleet: selections overwritten by others past their history; keeping every plan as it is until the operator writes them again (vmprep fleet want|apply)",
			"keys", sels)
		return
	}
	plans, progress := fleet.Plans(st.Fleet)
	for host, p := range plans {
		if old, ok := st.Plans[host]; ok && old.Equal(p) {
			continue
		}
		if err := c.Fleet.PutPlan(ctx, p); err != nil {
			c.Logger.Warn("fleet: cannot write a host's plan", "host", host, "err", err)
		}
	}
	if c.Observe != nil {
		c.Observe(st.Fleet, progress)
	}
}

// FleetNamespace is the namespace of a converter host's own requests:
// its user's name (vmprep users converters).
func FleetNamespace(host string) string { return messages.TargetConsumer(host) }

// FleetHost runs in a converter process: it announces Host, follows its
// plan and makes the host hold what the plan names — by asking the
// deployment for each image targeted at itself, so the pipeline pulls,
// converts and links the view as it does for any targeted request (one
// origin download per file, however many hosts ask) — and reports its
// state per selection. It catches up by itself: at start it asks again
// for everything its plan names (a held build answers from its cache).
type FleetHost struct {
	Fleet  *fleetkv.Store
	Client *client.Client
	Host   string
	Logger *slog.Logger
	// Retry is how soon a failed selection is tried again (default 30 s).
	Retry time.Duration
	// Store, if set, is the host's cache: the builds the host keeps per
	// selection are recorded there as uses, and older ones freed.
	Store *store.Store
	// FreeGrace: files committed more recently are never freed
	// (store.GCOptions.MinAge; 0: store.DefaultGCMinAge).
	FreeGrace time.Duration

	mu       sync.Mutex
	status   map[string]fleet.Status
	checked  map[string]string // selection → serial confirmed by this process
	inFlight map[string]bool
}

// Run serves until ctx ends.
func (h *FleetHost) Run(ctx context.Context) {
	h.status, h.checked, h.inFlight = map[string]fleet.Status{}, map[string]string{}, map[string]bool{}
	if h.Retry <= 0 {
		h.Retry = 30 * time.Second
	}
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	sub, err := h.Fleet.WatchPlan(h.Host, poke)
	if err != nil {
		h.Logger.Warn("cannot watch this host's fleet plan; reading it every "+h.Retry.String(), "err", err)
	} else {
		defer sub.Unsubscribe() //nolint:errcheck
	}
	if err := h.Fleet.Announce(ctx, h.Host, time.Now().UTC()); err != nil {
		h.Logger.Warn("cannot announce this host to the fleet", "err", err)
	}
	if st, _, err := h.Fleet.Load(ctx); err == nil {
		h.mu.Lock()
		for id, s := range st.Status[h.Host] {
			h.status[id] = s
		}
		h.mu.Unlock()
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(h.Retry)
	defer tick.Stop()
	for {
		plan, err := h.Fleet.Plan(ctx, h.Host)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			h.Logger.Warn("cannot read this host's fleet plan", "err", err)
		} else {
			h.reconcile(ctx, plan, &wg, poke)
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-tick.C:
		}
	}
}

// reconcile starts a worker for each desired build not yet confirmed held,
// and forgets (and frees) selections the plan no longer names.
func (h *FleetHost) reconcile(ctx context.Context, plan fleet.Plan, wg *sync.WaitGroup, done func()) {
	h.mu.Lock()
	wanted := map[string]bool{}
	for _, d := range plan.Desired {
		wanted[d.Selection] = true
		if h.inFlight[d.Selection] || h.checked[d.Selection] == d.Spec.Serial {
			continue
		}
		if st := h.status[d.Selection]; st.State == fleet.StateFailed && st.Serial == d.Spec.Serial && time.Since(st.Since) < h.Retry {
			continue
		}
		h.inFlight[d.Selection] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.hold(ctx, d, plan.Pinned)
			h.mu.Lock()
			delete(h.inFlight, d.Selection)
			h.mu.Unlock()
			done() // look at the plan again: it may have moved on meanwhile
		}()
	}
	var gone []string
	for id := range h.status {
		if !wanted[id] && !h.inFlight[id] {
			gone = append(gone, id)
		}
	}
	// Builds kept on disk for a selection this process never reported
	// (its state was lost) are freed too.
	if h.Store != nil {
		ents, _ := os.ReadDir(filepath.Join(h.Store.Root(), fleetDir))
		for _, e := range ents {
			if id := e.Name(); !wanted[id] && !h.inFlight[id] && !slices.Contains(gone, id) {
				gone = append(gone, id)
			}
		}
	}
	h.mu.Unlock()
	for _, id := range gone {
		if h.Store != nil {
			freed, err := h.space().forget(ctx, id, func(spec image.Spec) bool {
				return slices.ContainsFunc(plan.Desired, func(d fleet.Desired) bool {
					same := d.Spec
					same.Serial = ""
					return same == spec
				})
			})
			if err != nil {
				h.Logger.Warn("cannot free the builds of a selection no longer wanted", "selection", id, "err", err)
				continue
			}
			h.Logger.Info("freed the builds of a selection no longer wanted", "selection", id, "bytes", freed)
		}
		if err := h.Fleet.DeleteStatus(ctx, h.Host, id); err != nil {
			h.Logger.Warn("cannot remove a selection's state", "selection", id, "err", err)
			continue
		}
		h.mu.Lock()
		delete(h.status, id)
		delete(h.checked, id)
		h.mu.Unlock()
	}
}

func (h *FleetHost) space() fleetSpace {
	grace := h.FreeGrace
	if grace == 0 {
		grace = content.DefaultGCMinAge
	}
	return fleetSpace{store: h.Store, grace: grace}
}

// hold makes the host hold d's build, reporting pulling, then ready or failed.
func (h *FleetHost) hold(ctx context.Context, d fleet.Desired, pins []image.Spec) {
	h.mu.Lock()
	prev := h.status[d.Selection]
	h.mu.Unlock()
	log := h.Logger.With("selection", d.Selection, "serial", d.Spec.Serial)
	moving := prev.State != fleet.StateReady || prev.Serial != d.Spec.Serial
	if moving {
		h.report(ctx, d.Selection, fleet.Status{Serial: d.Spec.Serial, State: fleet.StatePulling, Held: prev.Held, Bytes: prev.Bytes, Kept: prev.Kept, Since: time.Now().UTC()})
	}
	// A request the pipeline never answers must not keep this selection
	// from following its plan: the attempt fails and is retried.
	actx, cancel := context.WithTimeout(ctx, fleetAttempt)
	res, err := h.Client.Prepare(actx, client.Request{Spec: d.Spec, Format: d.Format, Target: h.Host})
	cancel()
	if ctx.Err() != nil {
		return // stopping: the next start asks again
	}
	if err != nil {
		log.Warn("cannot hold a selected image; retrying", "err", err, "in", h.Retry)
		h.report(ctx, d.Selection, fleet.Status{Serial: d.Spec.Serial, State: fleet.StateFailed, Cause: err.Error(), Held: prev.Held, Bytes: prev.Bytes, Kept: prev.Kept, Since: time.Now().UTC()})
		return
	}
	var bytes int64
	for _, f := range res.Files {
		bytes += f.Size
	}
	kept := prev.Kept
	if h.Store != nil && res.Resolved != nil && res.Resolved.Serial == d.Spec.Serial {
		var free []string
		pinned := func(serial string) bool {
			spec := d.Spec
			spec.Serial = serial
			return slices.Contains(pins, spec)
		}
		kept, free = fleet.Retain(d.Spec.Serial, prev.Previous(), d.Keep, pinned)
		if err := h.keep(ctx, d, res, kept, free); err != nil {
			log.Warn("cannot record which builds this host keeps", "err", err)
		}
	}
	h.mu.Lock()
	h.checked[d.Selection] = d.Spec.Serial
	h.mu.Unlock()
	if moving || prev.Bytes != bytes || !slices.Equal(prev.Kept, kept) {
		log.Info("holding a selected image", "bytes", bytes, "view", res.View)
		h.report(ctx, d.Selection, fleet.Status{Serial: d.Spec.Serial, State: fleet.StateReady, Held: d.Spec.Serial, Bytes: bytes, Kept: kept, Since: time.Now().UTC()})
	}
}

// keep records why each build of d's selection the host keeps is kept
// (the current one, the previous ones, pinned ones), and frees the others.
func (h *FleetHost) keep(ctx context.Context, d fleet.Desired, res client.Result, kept []fleet.Kept, free []string) error {
	sp := h.space()
	why := func(serial, what string) string {
		return fmt.Sprintf("fleet selection %s, build %s: %s", d.Selection, serial, what)
	}
	if err := sp.keep(ctx, d.Selection, res, why(d.Spec.Serial, "current")); err != nil {
		return err
	}
	for _, k := range kept {
		if err := sp.rewhy(ctx, d.Selection, k.Serial, why(k.Serial, k.Why)); err != nil {
			return err
		}
	}
	if len(free) == 0 {
		return nil
	}
	freed, err := sp.free(ctx, d.Selection, free)
	if err != nil {
		return err
	}
	h.Logger.Info("freed older builds of a selection", "selection", d.Selection, "serials", free, "bytes", freed)
	return nil
}

func (h *FleetHost) report(ctx context.Context, id string, st fleet.Status) {
	h.mu.Lock()
	h.status[id] = st
	h.mu.Unlock()
	if err := h.Fleet.PutStatus(ctx, h.Host, id, st); err != nil && ctx.Err() == nil {
		h.Logger.Warn("cannot report this host's state", "selection", id, "err", err)
	}
}

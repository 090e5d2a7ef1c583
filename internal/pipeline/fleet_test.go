package pipeline_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	fleetmodel "github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/fleetkv"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// statusLog records every status a host writes, in order (one server: the
// subscription sees the puts in the order the stream stored them), to
// check the rollout bound over the whole run, not at sampled moments.
type statusLog struct {
	mu      sync.Mutex
	latest  map[string]fleetmodel.Status // by key
	maxPull int
	events  []statusEvent
}

// statusEvent is one status a host wrote.
type statusEvent struct {
	host   string
	state  fleetmodel.State
	serial string
}

func watchStatus(t *testing.T, nc *nats.Conn) *statusLog {
	l := &statusLog{latest: map[string]fleetmodel.Status{}}
	sub, err := nc.Subscribe("$KV."+fleetkv.Bucket+".status.>", func(m *nats.Msg) {
		var st fleetmodel.Status
		_ = json.Unmarshal(m.Data, &st)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.latest[m.Subject] = st
		host, _, _ := strings.Cut(strings.TrimPrefix(m.Subject, "$KV."+fleetkv.Bucket+".status."), ".")
		l.events = append(l.events, statusEvent{host, st.State, st.Serial})
		pulling := 0
		for _, s := range l.latest {
			if s.State == fleetmodel.StatePulling {
				pulling++
			}
		}
		l.maxPull = max(l.maxPull, pulling)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

// first is the index of the first event matching, or -1.
func (l *statusLog) first(match func(statusEvent) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, e := range l.events {
		if match(e) {
			return i
		}
	}
	return -1
}

func (l *statusLog) max() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.maxPull
}

// waitFleet waits until ok holds of the fleet state, or fails saying what
// the state was.
func waitFleet(t *testing.T, fl *fleetkv.Store, what string, ok func(fleetkv.State) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var last fleetkv.State
	for {
		st, _, err := fl.Load(ctx)
		if err == nil {
			last = st
			if ok(st) {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within 90s; status %+v builds %+v", what, last.Status, last.Builds)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func readyAt(st fleetkv.State, host, id, serial string) bool {
	s := st.Status[host][id]
	return s.State == fleetmodel.StateReady && s.Serial == serial && s.Held == serial
}

// Converter hosts hold what the selections name for them, with no request
// from anyone: the matching hosts only, a new build after a sync at most
// MaxParallel hosts at a time (one origin download per file), and a pin to
// the old build rolls them back from their caches.
func TestFleetSelectionsReachHosts(t *testing.T) {
	const s1, s2, s3, s4, s5 = "20261120", "20261201", "20261215", "20261220", "20261224"
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithSerials(s1))
	f := newFleet(t, m)
	withFleet := func(d *pipeline.Deps) { d.Fleet = true; d.SyncInterval = time.Hour }
	f.host("gateway", []string{messages.StageResolver, messages.StageCollector, messages.StageFetcher, messages.StageVerifier}, withFleet)
	for _, h := range []string{"host-1", "host-2", "host-3", "other"} {
		f.host(h, []string{messages.StageConverter}, func(d *pipeline.Deps) {
			withFleet(d)
			d.TargetedOnly, d.FleetFreeGrace = true, -1
		})
	}
	nc := f.conn()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	fl, err := fleetkv.Open(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	log := watchStatus(t, nc)
	sel, err := fleetmodel.Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Hosts: "host-*", MaxParallel: 2}.Normalize(false)
	if err != nil {
		t.Fatal(err)
	}
	id := sel.ID()
	if err := fl.PutSelection(ctx, sel); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(fleetkv.SubjectSync, nil); err != nil {
		t.Fatal(err)
	}
	hosts := []string{"host-1", "host-2", "host-3"}
	allAt := func(serial string) func(fleetkv.State) bool {
		return func(st fleetkv.State) bool {
			for _, h := range hosts {
				if !readyAt(st, h, id, serial) {
					return false
				}
			}
			return true
		}
	}
	waitFleet(t, fl, "every host-* holds "+s1, allAt(s1))
	checkViews := func(serial string) {
		t.Helper()
		for _, h := range hosts {
			view := filepath.Join(f.hosts[h].Root(), "images", "ubuntu", "24.04", "amd64")
			if b, err := os.ReadFile(filepath.Join(view, store.ViewSerialName)); err != nil || strings.TrimSpace(string(b)) != serial {
				t.Errorf("%s: view serial %q, %v; want %s", h, b, err, serial)
			}
			// The view's files are the build's, byte for byte.
			for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
				link := filepath.Join(view, viewName[role])
				got, err := os.ReadFile(link)
				if err != nil {
					t.Errorf("%s: %v", h, err)
					continue
				}
				if want := m.Content(m.SerialPath("ubuntu", "24.04", serial, image.ArchAMD64, role)); string(got) != string(want) {
					t.Errorf("%s: %s is not the %s of build %s", h, link, role, serial)
				}
			}
		}
		if _, err := os.Stat(filepath.Join(f.hosts["other"].Root(), "images", "ubuntu")); !os.IsNotExist(err) {
			t.Errorf("other, which no selection names, has images: %v", err)
		}
	}
	checkViews(s1)

	m.AddSerial("ubuntu", "24.04", s2)
	if err := nc.Publish(fleetkv.SubjectSync, nil); err != nil {
		t.Fatal(err)
	}
	waitFleet(t, fl, "every host-* holds "+s2, allAt(s2))
	checkViews(s2)
	if got := log.max(); got > 2 || got == 0 {
		t.Errorf("%d hosts pulled at once; max-parallel is 2", got)
	}
	for _, serial := range []string{s1, s2} {
		for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
			if n := m.Requests(m.SerialPath("ubuntu", "24.04", serial, image.ArchAMD64, role)); n != 1 {
				t.Errorf("origin served the %s of %s %d times, want once", role, serial, n)
			}
		}
	}

	// Rollback: a pin to the old build, which every host kept.
	sel.Serial = s1
	if err := fl.PutSelection(ctx, sel); err != nil {
		t.Fatal(err)
	}
	waitFleet(t, fl, "every host-* back at "+s1, allAt(s1))
	checkViews(s1)
	for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
		if n := m.Requests(m.SerialPath("ubuntu", "24.04", s1, image.ArchAMD64, role)); n != 1 {
			t.Errorf("the rollback downloaded the %s again (%d requests)", role, n)
		}
	}

	// A clone on host-1 uses the first build's disk.
	disk1 := blobPath(f.hosts["host-1"], m, s1, image.RoleDisk)
	cloneFile := filepath.Join(t.TempDir(), "vm1.img")
	if err := os.WriteFile(cloneFile, []byte("a clone"), 0o644); err != nil {
		t.Fatal(err)
	}
	base, err := f.hosts["host-1"].StoredFile(disk1)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.hosts["host-1"].RecordUse(ctx, store.Use{Kind: "clone", Base: base, Holder: cloneFile, Method: "overlay", Pins: true}, nil); err != nil {
		t.Fatal(err)
	}

	// A third build, followed again with keep 1: every host holds s3,
	// keeps s2 (the newest before it) and frees s1 — except host-1's disk,
	// which the clone uses.
	sel.Serial = ""
	if err := fl.PutSelection(ctx, sel); err != nil {
		t.Fatal(err)
	}
	m.AddSerial("ubuntu", "24.04", s3)
	if err := nc.Publish(fleetkv.SubjectSync, nil); err != nil {
		t.Fatal(err)
	}
	waitFleet(t, fl, "every host-* holds "+s3+" and keeps "+s2, func(st fleetkv.State) bool {
		for _, h := range hosts {
			s := st.Status[h][id]
			if !readyAt(st, h, id, s3) || len(s.Kept) != 1 || s.Kept[0].Serial != s2 {
				return false
			}
		}
		return true
	})
	checkViews(s3)
	for _, h := range hosts {
		for _, role := range []image.Role{image.RoleKernel, image.RoleDisk} {
			for serial, want := range map[string]bool{s1: h == "host-1" && role == image.RoleDisk, s2: true, s3: true} {
				if _, err := os.Stat(blobPath(f.hosts[h], m, serial, role)); (err == nil) != want {
					t.Errorf("%s: %s of build %s present: %v, want %v", h, role, serial, err == nil, want)
				}
			}
		}
		// `vmprep cache ls` says why each kept build is kept.
		uses, err := f.hosts[h].Uses(ctx)
		if err != nil {
			t.Fatal(err)
		}
		why := map[string]bool{}
		for _, u := range uses {
			if u.Kind == "fleet" && u.Live {
				why[u.Method] = true
			}
		}
		for _, want := range []string{"build " + s3 + ": current", "build " + s2 + ": previous build 1 of 1 kept (keep 1)"} {
			found := false
			for w := range why {
				found = found || strings.Contains(w, want)
			}
			if !found {
				t.Errorf("%s: no fleet use says %q: %v", h, want, why)
			}
		}
	}

	// A canary: host-3 takes s4 first, the others only once it holds it.
	sel.Canary, sel.MaxParallel, sel.MaxFailed = "host-3", 1, 1
	if err := fl.PutSelection(ctx, sel); err != nil {
		t.Fatal(err)
	}
	m.AddSerial("ubuntu", "24.04", s4)
	if err := nc.Publish(fleetkv.SubjectSync, nil); err != nil {
		t.Fatal(err)
	}
	waitFleet(t, fl, "every host-* holds "+s4, allAt(s4))
	canaryReady := log.first(func(e statusEvent) bool {
		return e.host == "host-3" && e.state == fleetmodel.StateReady && e.serial == s4
	})
	otherPulling := log.first(func(e statusEvent) bool {
		return e.host != "host-3" && e.state == fleetmodel.StatePulling && e.serial == s4
	})
	if canaryReady < 0 || otherPulling < canaryReady {
		t.Errorf("a host pulled %s (event %d) before the canary held it (event %d)", s4, otherPulling, canaryReady)
	}

	// A build that fails on the canary pauses the rollout: nobody else is given it.
	m.AddSerial("ubuntu", "24.04", s5)
	m.Tamper(m.SerialPath("ubuntu", "24.04", s5, image.ArchAMD64, image.RoleKernel))
	if err := nc.Publish(fleetkv.SubjectSync, nil); err != nil {
		t.Fatal(err)
	}
	waitFleet(t, fl, "the canary failed and the rollout paused", func(st fleetkv.State) bool {
		_, progress := fleetmodel.Plans(st.Fleet)
		return st.Status["host-3"][id].State == fleetmodel.StateFailed && progress[id].Paused
	})
	st, _, err := fl.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"host-1", "host-2"} {
		if serial, _ := st.Plans[h].Assigned(id); serial != s4 || !readyAt(st, h, id, s4) {
			t.Errorf("%s, during a paused rollout: given %q, status %+v", h, serial, st.Status[h][id])
		}
	}

	// Unwant: the hosts drop the selection's state and free its builds
	// and view; the clone's base stays.
	if err := fl.DeleteSelection(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitFleet(t, fl, "no host reports the removed selection", func(st fleetkv.State) bool {
		for _, h := range hosts {
			if _, ok := st.Status[h][id]; ok {
				return false
			}
		}
		return true
	})
	for _, h := range hosts {
		for _, serial := range []string{s2, s3, s4} {
			if _, err := os.Stat(blobPath(f.hosts[h], m, serial, image.RoleDisk)); err == nil {
				t.Errorf("%s: the disk of %s is still there after unwant", h, serial)
			}
		}
		if _, err := os.Stat(filepath.Join(f.hosts[h].Root(), "images", "ubuntu", "24.04", "amd64")); err == nil {
			t.Errorf("%s: the view is still there after unwant", h)
		}
	}
	if _, err := os.Stat(disk1); err != nil {
		t.Errorf("host-1: the disk its clone uses was freed: %v", err)
	}
}

// blobPath is where a host's store keeps the file of role of a build.
func blobPath(st *store.Store, m *testmirror.Mirror, serial string, role image.Role) string {
	return filepath.Join(st.Root(), "blobs", "sha256", m.Digest(m.SerialPath("ubuntu", "24.04", serial, image.ArchAMD64, role)).Hex)
}

// viewName is the link of each role in an image's view (qcow2 disk).
var viewName = map[image.Role]string{image.RoleKernel: store.LinkKernel, image.RoleInitramfs: store.LinkInitramfs, image.RoleDisk: store.LinkDisk}

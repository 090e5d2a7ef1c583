package fleet

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/pkg/image"
)

func mustSel(t *testing.T, s Selection) Selection {
	t.Helper()
	n, err := s.Normalize(false)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestNormalize(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      Selection
		keepSet bool
		want    Selection
		err     string
	}{
		{name: "defaults", in: Selection{Distro: "Ubuntu", Version: "24.04", Arch: "x86_64"},
			want: Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Format: "qcow2", Hosts: "*", Keep: 1}},
		{name: "keep zero given", in: Selection{Distro: "ubuntu", Version: "24.04", Arch: "arm64", Format: "raw", Hosts: "host-*"}, keepSet: true,
			want: Selection{Distro: "ubuntu", Version: "24.04", Arch: "arm64", Format: "raw", Hosts: "host-*", Keep: 0}},
		{name: "bad format", in: Selection{Distro: "ubuntu", Version: "24.04", Format: "vmdk"}, err: "format"},
		{name: "bad glob", in: Selection{Distro: "ubuntu", Version: "24.04", Hosts: "host-["}, err: "hosts pattern"},
		{name: "slash in glob", in: Selection{Distro: "ubuntu", Version: "24.04", Hosts: "a/b"}, err: "slash"},
		{name: "bad canary", in: Selection{Distro: "ubuntu", Version: "24.04", Canary: "["}, err: "canary pattern"},
		{name: "bad serial", in: Selection{Distro: "ubuntu", Version: "24.04", Serial: "../x"}, err: "serial"},
		{name: "negative keep", in: Selection{Distro: "ubuntu", Version: "24.04", Keep: -1}, keepSet: true, err: "keep -1"},
		{name: "escaping version", in: Selection{Distro: "ubuntu", Version: "../etc"}, err: "version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.in.Normalize(tc.keepSet)
			if tc.err != "" {
				if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want ErrInvalid mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestMatchesAndID(t *testing.T) {
	sel := mustSel(t, Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Hosts: "host-*", Canary: "host-1"})
	for host, want := range map[string]bool{"host-1": true, "host-22": true, "other": false, "host": false} {
		if got := sel.Matches(host); got != want {
			t.Errorf("Matches(%q) = %v, want %v", host, got, want)
		}
	}
	if !sel.IsCanary("host-1") || sel.IsCanary("host-2") {
		t.Error("IsCanary wrong")
	}
	id := sel.ID()
	if !strings.HasPrefix(id, "ubuntu-24_04-amd64-qcow2-") || strings.ContainsAny(id, ".*/ ") {
		t.Fatalf("ID %q is not one readable key token", id)
	}
	// Rollout policy and pin do not change identity; hosts and format do.
	same := sel
	same.Serial, same.Keep, same.MaxParallel = "20240101", 3, 2
	if same.ID() != id {
		t.Error("policy changed the ID")
	}
	for _, other := range []Selection{{Hosts: "host-?"}, {Format: image.FormatRaw}} {
		o := sel
		if other.Hosts != "" {
			o.Hosts = other.Hosts
		}
		if other.Format != "" {
			o.Format = other.Format
		}
		if o.ID() == id {
			t.Errorf("%s has the same ID as %s", o, sel)
		}
	}
}

func TestRollout(t *testing.T) {
	hosts := []string{"h1", "h2", "h3", "h4", "h5"}
	ready := func(s string) Status { return Status{Serial: s, State: StateReady, Held: s} }
	for _, tc := range []struct {
		name     string
		sel      Selection
		target   string
		assigned map[string]string
		status   map[string]Status
		want     map[string]string
		paused   bool
		done     int
	}{
		{name: "no build yet", sel: Selection{}, target: "",
			want: map[string]string{"h1": "", "h2": "", "h3": "", "h4": "", "h5": ""}},
		{name: "all at once", sel: Selection{}, target: "s1",
			want: map[string]string{"h1": "s1", "h2": "s1", "h3": "s1", "h4": "s1", "h5": "s1"}},
		{name: "two at a time, in name order", sel: Selection{MaxParallel: 2}, target: "s2",
			assigned: map[string]string{"h1": "s1", "h2": "s1", "h3": "s1", "h4": "s1", "h5": "s1"},
			want:     map[string]string{"h1": "s2", "h2": "s2", "h3": "s1", "h4": "s1", "h5": "s1"}},
		{name: "a finished host frees its slot", sel: Selection{MaxParallel: 2}, target: "s2",
			assigned: map[string]string{"h1": "s2", "h2": "s2", "h3": "s1", "h4": "s1", "h5": "s1"},
			status:   map[string]Status{"h1": ready("s2"), "h2": {Serial: "s2", State: StatePulling}},
			want:     map[string]string{"h1": "s2", "h2": "s2", "h3": "s2", "h4": "s1", "h5": "s1"}, done: 1},
		{name: "canary first", sel: Selection{Canary: "h4"}, target: "s2",
			assigned: map[string]string{"h1": "s1", "h2": "s1", "h3": "s1", "h4": "s1", "h5": "s1"},
			want:     map[string]string{"h1": "s1", "h2": "s1", "h3": "s1", "h4": "s2", "h5": "s1"}},
		{name: "others after the canary", sel: Selection{Canary: "h4", MaxParallel: 3}, target: "s2",
			assigned: map[string]string{"h1": "s1", "h2": "s1", "h3": "s1", "h4": "s2", "h5": "s1"},
			status:   map[string]Status{"h4": ready("s2")},
			want:     map[string]string{"h1": "s2", "h2": "s2", "h3": "s2", "h4": "s2", "h5": "s1"}, done: 1},
		{name: "paused by failures", sel: Selection{MaxParallel: 1, MaxFailed: 1}, target: "s2",
			assigned: map[string]string{"h1": "s2", "h2": "s1", "h3": "s1", "h4": "s1", "h5": "s1"},
			status:   map[string]Status{"h1": {Serial: "s2", State: StateFailed, Cause: "x"}},
			want:     map[string]string{"h1": "s2", "h2": "s1", "h3": "s1", "h4": "s1", "h5": "s1"}, paused: true},
		{name: "rollback by pin is a rollout too", sel: Selection{MaxParallel: 2, Serial: "s1"}, target: "s1",
			assigned: map[string]string{"h1": "s2", "h2": "s2", "h3": "s2", "h4": "s2", "h5": "s2"},
			status:   map[string]Status{"h1": ready("s2"), "h2": ready("s2"), "h3": ready("s2"), "h4": ready("s2"), "h5": ready("s2")},
			want:     map[string]string{"h1": "s1", "h2": "s1", "h3": "s2", "h4": "s2", "h5": "s2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, prog := Rollout(tc.sel, tc.target, hosts, tc.assigned, tc.status)
			for _, h := range hosts {
				if got[h] != tc.want[h] {
					t.Errorf("%s: got %q, want %q", h, got[h], tc.want[h])
				}
			}
			if prog.Paused != tc.paused || prog.Done != tc.done {
				t.Errorf("progress %+v: want paused %v, done %d", prog, tc.paused, tc.done)
			}
			if tc.sel.MaxParallel > 0 && prog.Moving+prog.Failed > tc.sel.MaxParallel {
				t.Errorf("progress %+v: more than %d moving", prog, tc.sel.MaxParallel)
			}
		})
	}
}

func TestPlans(t *testing.T) {
	follow := mustSel(t, Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Hosts: "host-*"})
	pinned := mustSel(t, Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Format: "raw", Hosts: "host-1", Serial: "s1"})
	plans, prog := Plans(Fleet{
		Selections: []Selection{follow, pinned},
		Builds:     map[string]Build{follow.ID(): {Serial: "s2"}},
		Hosts:      []string{"host-1", "host-2", "other"},
	})
	if len(plans["other"].Desired) != 0 {
		t.Errorf("other got %+v", plans["other"])
	}
	if s, ok := plans["host-2"].Assigned(follow.ID()); !ok || s != "s2" {
		t.Errorf("host-2 follow = %q %v", s, ok)
	}
	if s, _ := plans["host-1"].Assigned(pinned.ID()); s != "s1" {
		t.Errorf("host-1 pinned = %q", s)
	}
	pin := image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Serial: "s1"}
	// A pin protects its build on every host holding the image, not only its own hosts.
	if len(plans["host-1"].Pinned) != 1 || plans["host-1"].Pinned[0] != pin || len(plans["host-2"].Pinned) != 1 || len(plans["other"].Pinned) != 0 {
		t.Errorf("pins: host-1 %v host-2 %v", plans["host-1"].Pinned, plans["host-2"].Pinned)
	}
	if p := prog[follow.ID()]; p.Hosts != 2 || p.Moving != 2 || p.Target != "s2" {
		t.Errorf("progress %+v", p)
	}
}

func TestParseFileAndDiff(t *testing.T) {
	good := `
- distro: ubuntu
  version: "24.04"
  arch: amd64
  hosts: host-*
  max_parallel: 2
- distro: ubuntu
  version: "22.04"
  arch: amd64
  format: raw
  keep: 0
`
	sels, err := ParseFile(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(sels) != 2 || sels[0].Keep != 1 || sels[1].Keep != 0 || sels[0].MaxParallel != 2 || sels[1].Hosts != "*" {
		t.Fatalf("parsed %+v", sels)
	}
	for name, bad := range map[string]string{
		"unknown field": "- distro: ubuntu\n  version: '24.04'\n  colour: red\n",
		"duplicate":     "- {distro: ubuntu, version: '24.04', arch: amd64}\n- {distro: Ubuntu, version: '24.04', arch: x86_64}\n",
		"invalid":       "- {distro: ubuntu, version: '24.04', format: vmdk}\n",
		"not a list":    "distro: ubuntu\n",
	} {
		if _, err := ParseFile(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if got, err := ParseFile(strings.NewReader("")); err != nil || len(got) != 0 {
		t.Errorf("empty file: %v %v", got, err)
	}

	changed := sels[0]
	changed.MaxParallel = 3
	gone := mustSel(t, Selection{Distro: "debian", Version: "12", Arch: "amd64"})
	put, remove := Diff([]Selection{sels[1], sels[0], gone}, []Selection{changed, sels[1]})
	if len(put) != 1 || put[0] != changed || len(remove) != 1 || remove[0] != gone {
		t.Fatalf("put %v remove %v", put, remove)
	}
}

func TestRetain(t *testing.T) {
	pinned := func(s string) bool { return s == "1" }
	for _, tc := range []struct {
		name     string
		current  string
		previous []string
		keep     int
		kept     []string
		free     []string
	}{
		{name: "first build", current: "1", keep: 1},
		{name: "keep one, a pinned one too", current: "3", previous: []string{"2", "1"}, keep: 1, kept: []string{"2", "1"}},
		{name: "keep one, the oldest freed", current: "4", previous: []string{"2", "3"}, keep: 1, kept: []string{"3"}, free: []string{"2"}},
		{name: "keep zero", current: "3", previous: []string{"2"}, keep: 0, free: []string{"2"}},
		{name: "rollback keeps the newer one", current: "2", previous: []string{"3", "2", "0"}, keep: 1, kept: []string{"3"}, free: []string{"0"}},
		{name: "after a rollback, the oldest goes", current: "10", previous: []string{"2", "9"}, keep: 1, kept: []string{"9"}, free: []string{"2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kept, free := Retain(tc.current, tc.previous, tc.keep, pinned)
			var keptSerials []string
			for _, k := range kept {
				keptSerials = append(keptSerials, k.Serial)
				if k.Why == "" {
					t.Errorf("kept %s without a reason", k.Serial)
				}
			}
			if strings.Join(keptSerials, ",") != strings.Join(tc.kept, ",") || strings.Join(free, ",") != strings.Join(tc.free, ",") {
				t.Errorf("kept %v free %v; want kept %v free %v", keptSerials, free, tc.kept, tc.free)
			}
		})
	}
	st := Status{Held: "s3", Kept: []Kept{{Serial: "s2"}}}
	if got := st.Previous(); strings.Join(got, ",") != "s3,s2" {
		t.Errorf("Previous = %v", got)
	}
}

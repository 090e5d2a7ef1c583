package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/fleetkv"
	"github.com/vmprep/vmprep/internal/natsembed"
	"github.com/vmprep/vmprep/internal/testutil"
)

// The operator's fleet commands against a real server: want, ls, apply
// (declarative: what the file does not name goes), unwant, status; bad
// input is refused before anything is written.
func TestFleetCommands(t *testing.T) {
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	url := srv.ClientURL()
	fleetRun := func(t *testing.T, wantCode int, args ...string) string {
		t.Helper()
		var stdout, stderr strings.Builder
		code := run(append([]string{"fleet"}, append(args[:1:1], append([]string{"--nats", url}, args[1:]...)...)...), &stdout, &stderr)
		if code != wantCode {
			t.Fatalf("fleet %v: exit %d, want %d: %s%s", args, code, wantCode, stdout.String(), stderr.String())
		}
		return stdout.String() + stderr.String()
	}
	for _, bad := range [][]string{
		{"want", "--format", "vmdk", "ubuntu", "24.04"},
		{"want", "--hosts", "host-[", "ubuntu", "24.04"},
		{"want", "ubuntu"},
		{"want", "--keep", "-1", "ubuntu", "24.04"},
	} {
		fleetRun(t, 2, bad...)
	}
	fleetRun(t, 0, "want", "--hosts", "host-*", "--arch", "amd64", "--max-parallel", "2", "--canary", "host-1", "ubuntu", "24.04")
	fleetRun(t, 0, "want", "--arch", "amd64", "--format", "raw", "--serial", "20240101", "debian", "12")
	out := fleetRun(t, 0, "ls")
	for _, want := range []string{"ubuntu 24.04 amd64", "host-*", "none yet", "max-parallel 2, canary host-1", "pinned 20240101", "raw"} {
		if !strings.Contains(out, want) {
			t.Errorf("ls lacks %q:\n%s", want, out)
		}
	}
	fleetRun(t, 1, "unwant", "--arch", "amd64", "fedora", "40")
	fleetRun(t, 0, "unwant", "--arch", "amd64", "--format", "raw", "debian", "12")

	file := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(file, []byte("- {distro: ubuntu, version: '22.04', arch: amd64, hosts: 'edge-*', keep: 2}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out = fleetRun(t, 0, "apply", file)
	if !strings.Contains(out, "1 written, 1 removed") {
		t.Errorf("apply: %s", out)
	}
	var list []fleetListing
	if err := json.Unmarshal([]byte(fleetRun(t, 0, "ls", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Version != "22.04" || list[0].Keep != 2 || list[0].Hosts != "edge-*" {
		t.Fatalf("after apply: %+v", list)
	}
	out = fleetRun(t, 0, "apply", file)
	if !strings.Contains(out, "0 written, 0 removed, 1 unchanged") {
		t.Errorf("second apply: %s", out)
	}
	// Selections overwritten past their history (tampered): apply writes
	// the ones FILE names again and deletes the others.
	fleetRun(t, 0, "want", "--arch", "amd64", "debian", "12")
	if err := json.Unmarshal([]byte(fleetRun(t, 0, "ls", "--json")), &list); err != nil || len(list) != 2 {
		t.Fatalf("after want: %+v %v", list, err)
	}
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, l := range list {
		testutil.EraseByReply(t, nc, nc, "$KV."+fleetkv.Bucket+"."+fleetkv.SelectionKey(l.ID), fleetkv.History)
	}
	if out := fleetRun(t, 0, "ls"); !strings.Contains(out, "overwritten by others") {
		t.Errorf("ls does not report the tampered selections:\n%s", out)
	}
	out = fleetRun(t, 0, "apply", file)
	if !strings.Contains(out, "(tampered)") || !strings.Contains(out, "1 written, 1 removed") {
		t.Errorf("apply over tampered selections: %s", out)
	}
	if err := json.Unmarshal([]byte(fleetRun(t, 0, "ls", "--json")), &list); err != nil || len(list) != 1 || list[0].Version != "22.04" {
		t.Fatalf("after apply over tampered selections: %+v %v", list, err)
	}
	if out := fleetRun(t, 0, "ls"); strings.Contains(out, "overwritten by others") {
		t.Errorf("ls still reports tampered selections after apply:\n%s", out)
	}
	out = fleetRun(t, 0, "status")
	if !strings.Contains(out, "S1") || !strings.Contains(out, "no build yet") {
		t.Errorf("status: %s", out)
	}
}

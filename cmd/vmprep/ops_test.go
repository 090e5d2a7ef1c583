package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

func runOut(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e strings.Builder
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

// TestStatusAndDeadCommands runs vmprep status and vmprep dead against a
// vmprep serve deployment: a prepared request, the deployment overview with
// its live processes, and a poison message through ls, show and replay.
func TestStatusAndDeadCommands(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	r := startServe(t, "--mirror", m.URL, "--keyring", m.KeyringFile())
	url := r.url(t)
	if code, _, stderr := runOut(t, "prepare", "--nats", url, "--request-id", "r-cmd", "--arch", "amd64", "--format", "qcow2", "ubuntu", "24.04"); code != 0 {
		t.Fatalf("prepare: %s", stderr)
	}

	// One request.
	code, out, stderr := runOut(t, "status", "--nats", url, "--json", "r-cmd")
	if code != 0 {
		t.Fatalf("status r-cmd: exit %d: %s", code, stderr)
	}
	var st ops.RequestStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if st.Result == nil || st.Result.Status != messages.ResultPrepared || len(st.Assets) != 3 {
		t.Errorf("status of a prepared request: %s", out)
	}
	code, out, _ = runOut(t, "status", "--nats", url, "r-cmd")
	for _, want := range []string{"request r-cmd: ubuntu 24.04 amd64, qcow2 — prepared", "kernel", "initramfs", "disk", "done"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status r-cmd lacks %q:\n%s", want, out)
		}
	}
	if code, _, stderr := runOut(t, "status", "--nats", url, "r-nobody"); code != 1 || !strings.Contains(stderr, "unknown request") {
		t.Errorf("status of an unknown request: exit %d: %s", code, stderr)
	}

	// The deployment: streams, backlogs, and serve's stages alive.
	var ov ops.Overview
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out, stderr = runOut(t, "status", "--nats", url, "--json")
		if code != 0 {
			t.Fatalf("status: exit %d: %s", code, stderr)
		}
		if err := json.Unmarshal([]byte(out), &ov); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		if len(ov.Processes) == 5 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(ov.Processes) != 5 || len(ov.Consumers) != 5 || len(ov.Idle) != 0 {
		t.Errorf("overview: %d processes, %d consumers, idle %v; want 5, 5, none:\n%s", len(ov.Processes), len(ov.Consumers), ov.Idle, out)
	}
	code, out, _ = runOut(t, "status", "--nats", url)
	for _, want := range []string{"VMPREP_WORK", "VMPREP_RESULTS", "PENDING", "fetcher", "vmprep-serve"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	// Dead letters.
	if code, out, _ := runOut(t, "dead", "ls", "--nats", url); code != 0 || !strings.Contains(out, "no dead letters") {
		t.Errorf("dead ls on a clean deployment: %d %q", code, out)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	poison := `{"v":1,"type":"asset","request_id":"r-poison"}`
	if err := nc.Publish(messages.SubjectFetch, []byte(poison)); err != nil {
		t.Fatal(err)
	}
	var entries []ops.DeadEntry
	deadline = time.Now().Add(30 * time.Second)
	for len(entries) == 0 {
		code, out, stderr = runOut(t, "dead", "ls", "--nats", url, "--json")
		if code != 0 || json.Unmarshal([]byte(out), &entries) != nil {
			t.Fatalf("dead ls --json: exit %d: %s %s", code, out, stderr)
		}
		if time.Now().After(deadline) {
			t.Fatal("no dead letter for the poison message")
		}
		time.Sleep(20 * time.Millisecond)
	}
	seq := strconv.FormatUint(entries[0].Seq, 10)
	code, out, _ = runOut(t, "dead", "ls", "--nats", url)
	for _, want := range []string{seq, "fetcher", "r-poison", "asset event has no asset role"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("dead ls lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runOut(t, "dead", "show", "--nats", url, seq)
	for _, want := range []string{"stage:      fetcher", "request:    r-poison", `"request_id": "r-poison"`} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("dead show lacks %q:\n%s", want, out)
		}
	}
	// Its request got a failed result: a replay would not change it.
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, _, stderr = runOut(t, "dead", "replay", "--nats", url, seq)
		if code == 1 && strings.Contains(stderr, "already has a result") || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code != 1 || !strings.Contains(stderr, "already has a result") || !strings.Contains(stderr, "new request id") {
		t.Errorf("replay of an answered request: exit %d: %s", code, stderr)
	}
	for _, args := range [][]string{{"dead"}, {"dead", "show", "--nats", url}, {"dead", "show", "--nats", url, "x"}, {"dead", "frob"}} {
		if code, _, _ := runOut(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	if code, _, stderr := runOut(t, "dead", "show", "--nats", url, "9999"); code != 1 || !strings.Contains(stderr, "no such dead letter") {
		t.Errorf("dead show 9999: exit %d: %s", code, stderr)
	}
}

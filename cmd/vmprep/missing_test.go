package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// A deployment without a fetcher takes the request and cannot answer it:
// prepare --nats says so within seconds and keeps waiting, and status flags
// the consumer that holds work with no process. serve's "resolver" runs the
// collector, as the resolver binary does, so only the fetcher is missing.
func TestMissingStageIsNamed(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	r := startServe(t, "--listen", "127.0.0.1:0", "--stages", "resolver,verifier,converter", "--mirror", m.URL, "--keyring", m.KeyringFile())
	url := r.url(t)

	var stdout, stderr testutil.LockedBuffer
	started := time.Now()
	prep := testutil.StartBackground(t, "vmprep prepare", &stderr, func(ctx context.Context) int {
		return runPrepare(ctx, []string{"--nats", url, "--request-id", "r-missing", "--arch", "amd64", "--format", "qcow2", "ubuntu", "24.04"}, &stdout, &stderr)
	})
	const want = "no process consumes " + messages.SubjectFetch + " ("
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(stderr.String(), want) {
		if c, exited := prep.Exited(); exited {
			t.Fatalf("prepare exited %d without naming the missing stage:\n%s", c, stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("prepare never said %q:\n%s", want, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("named after %v: %s", time.Since(started).Round(time.Second), strings.TrimSpace(stderr.String()))
	if !strings.Contains(stderr.String(), "(3 waiting)") || !strings.Contains(stderr.String(), "start a fetcher") {
		t.Errorf("the line should count the kernel, initramfs and disk waiting and say what to start:\n%s", stderr.String())
	}
	if strings.Contains(stderr.String(), "consumes "+messages.SubjectDone) || strings.Contains(stderr.String(), "consumes "+messages.SubjectPrepare) {
		t.Errorf("resolver or collector named missing, though serve's resolver runs both:\n%s", stderr.String())
	}
	if _, exited := prep.Exited(); exited {
		t.Fatalf("prepare gave up; it should keep waiting for a fetcher:\n%s", stderr.String())
	}

	// status flags it too, in text and JSON.
	code, out, errOut := runOut(t, "status", "--nats", url)
	if code != 0 || !strings.Contains(out, "WARNING: "+want) {
		t.Errorf("status does not flag the fetcher's waiting work (exit %d, %s):\n%s", code, errOut, out)
	}
	code, out, _ = runOut(t, "status", "--nats", url, "--json")
	var ov ops.Overview
	if err := json.Unmarshal([]byte(out), &ov); code != 0 || err != nil || len(ov.Stranded) != 1 || ov.Stranded[0].Consumer != messages.StageFetcher || ov.Stranded[0].Waiting != 3 {
		t.Errorf("status --json stranded = %+v (%v); want the fetcher with 3 waiting:\n%s", ov.Stranded, err, out)
	}
	prep.Stop()
	prep.Wait(30 * time.Second)
}

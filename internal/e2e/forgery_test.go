package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestForgedDoneEvents runs deploy/nats as a three-node cluster and holds
// bob's request in flight (its disk waits for a converter that is not yet
// running). Each stage user then forges done events for it, on the one done
// subject it may publish to: successes naming the attacker's digest, object,
// signer, host and path, statuses its stage cannot produce, and host claims
// from the wrong host. None yields a result or touches the request state;
// each is dead-lettered by the collector with the reason. Then the converter
// starts and bob's request completes with the resolution's files.
func TestForgedDoneEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	d := startDeployment(t, "resolver", "fetcher", "verifier")
	c, as, connect := d.c, d.as, d.connect
	_, admin, _ := connect("admin")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// bob asks for a raw disk and converts nothing himself: the disk waits
	// on vmprep.asset.convert while no converter runs.
	_, bobJS, _ := connect("bob")
	const id = "forge-target"
	req := messages.PrepareRequest{RequestID: id, Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}, Format: image.FormatRaw}
	data, err := messages.Encode(messages.TypePrepareRequest, &req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bobJS.Publish(ctx, messages.PrepareSubject("bob"), data); err != nil {
		t.Fatal(err)
	}
	kv, err := admin.KeyValue(ctx, messages.BucketRequests)
	if err != nil {
		t.Fatal(err)
	}
	key := messages.RequestKey("bob", id)
	var state struct {
		Resolution *catalog.Resolution                `json:"resolution"`
		Done       map[image.Role]messages.AssetEvent `json:"done"`
		Final      *messages.Result                   `json:"final"`
	}
	load := func() uint64 {
		t.Helper()
		e, err := kv.Get(ctx, key)
		if err != nil {
			return 0
		}
		if err := json.Unmarshal(e.Value(), &state); err != nil {
			t.Fatal(err)
		}
		return e.Revision()
	}
	// In flight: resolved, the kernel and initramfs done, the disk waiting.
	cluster.WaitFor(t, "bob's kernel and initramfs to be done", 3*time.Minute, func() bool {
		return load() > 0 && state.Resolution != nil && len(state.Done) == 2
	})
	rev := load()
	disk, ok := state.Resolution.Asset(image.RoleDisk)
	if !ok {
		t.Fatal("no disk in the resolution")
	}

	// The forgeries. genuine is what the converter would send; each forgery
	// changes what an attacker wants changed.
	evil := digest.Digest{Algorithm: digest.SHA256, Hex: strings.Repeat("e", 64)}
	genuine := func() messages.AssetEvent {
		return messages.AssetEvent{Namespace: "bob", RequestID: id, Spec: req.Spec, Resolved: &state.Resolution.Spec, Format: image.FormatRaw,
			Roles: []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk}, Asset: disk, Status: messages.StatusConverted,
			Object: &messages.ObjectRef{Bucket: cluster.Bucket, Name: objectstore.Name(disk.Digest), Size: disk.Size},
			Host:   "mac1", Path: "/tmp/attacker/disk.raw", Size: 1 << 20, FileFormat: image.FormatRaw}
	}
	attacker := func(ev messages.AssetEvent) messages.AssetEvent {
		ev.Asset.Digest, ev.Object = evil, &messages.ObjectRef{Bucket: cluster.Bucket, Name: objectstore.Name(evil), Size: disk.Size}
		ev.Asset.Trust.Signer = "EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE"
		return ev
	}
	verified := func(ev messages.AssetEvent) messages.AssetEvent {
		ev.Status, ev.FileFormat, ev.Size = messages.StatusVerified, image.FormatRaw, disk.Size
		return ev
	}
	hostless := func(ev messages.AssetEvent) messages.AssetEvent { ev.Host, ev.Path = "", ""; return ev }
	forgeries := []struct {
		name, user, subject string
		ev                  messages.AssetEvent
		reason              string
	}{
		{"fetcher: converted, attacker's digest", "fetcher", messages.DoneSubject(messages.StageFetcher), attacker(genuine()), "only the verifier and converters"},
		{"fetcher: verified with the resolution's digest", "fetcher", messages.DoneSubject(messages.StageFetcher), verified(hostless(genuine())), "only the verifier and converters"},
		{"verifier: attacker's digest and signer", "verifier", messages.DoneSubject(messages.StageVerifier), verified(hostless(attacker(genuine()))), "digest"},
		{"verifier: converted", "verifier", messages.DoneSubject(messages.StageVerifier), hostless(genuine()), "only converters convert"},
		{"verifier: a file on mac1", "verifier", messages.DoneSubject(messages.StageVerifier), verified(genuine()), "only that host's converter"},
		{"converter on mac1: attacker's digest, object and signer on its host", "converter_mac1", messages.DoneSubjectOf("mac1"), attacker(genuine()), "digest"},
		{"converter on mac2: a file on mac1", "converter_mac2", messages.DoneSubjectOf("mac2"), genuine(), "only that host's converter"},
		{"converter: a file on a host, from no host's subject", "converter", messages.DoneSubject(messages.StageConverter), genuine(), "only that host's converter"},
	}
	refusedAtDoor := 0
	for _, f := range forgeries {
		nc, _, errs := connect(f.user)
		data, err := messages.Encode(messages.TypeAsset, &f.ev)
		if err != nil {
			t.Fatal(err)
		}
		// Marked as the subject's publisher marks it: what is forged is
		// what that stage may say.
		m := nats.NewMsg(f.subject)
		m.Data = data
		writer, _ := messages.DoneWriterOf(f.subject)
		m.Header.Set(messages.HeaderWriter, writer)
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errs:
			if !errors.Is(err, nats.ErrPermissionViolation) {
				t.Fatalf("%s: %v", f.name, err)
			}
			// A narrower user (one per converter host) may not even publish it.
			t.Logf("%s: refused by the server: %v", f.name, err)
			refusedAtDoor++
		case <-time.After(time.Second):
		}
	}
	// Nobody may speak on another stage's subject, nor write the request
	// state the collector checks against (only the resolver user may).
	kvSubject := "$KV." + messages.BucketRequests + "." + key
	for _, p := range [][2]string{
		{"fetcher", messages.DoneSubject(messages.StageVerifier)}, {"verifier", messages.DoneSubjectOf("mac1")}, {"converter", messages.DoneSubject(messages.StageVerifier)},
		{"converter", messages.DoneSubjectOf("mac1")}, {"converter_mac2", messages.DoneSubjectOf("mac1")},
		{"fetcher", kvSubject}, {"verifier", kvSubject}, {"converter", kvSubject}, {"bob", kvSubject},
	} {
		user, subject := p[0], p[1]
		nc, _, errs := connect(user)
		_ = nc.Publish(subject, []byte(`{}`))
		_ = nc.Flush()
		select {
		case err := <-errs:
			if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), subject) {
				t.Errorf("%s publishing on %s: %v", user, subject, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s may publish on %s", user, subject)
		}
	}

	// Each forgery that reached the collector is a dead letter with its reason.
	want := len(forgeries) - refusedAtDoor
	var reasons []string
	cluster.WaitFor(t, "the collector's dead letters", 2*time.Minute, func() bool {
		reasons = deadReasons(ctx, t, admin, messages.DeadSubject(messages.StageCollector))
		return len(reasons) >= want
	})
	for _, f := range forgeries {
		found := false
		for _, r := range reasons {
			found = found || (strings.Contains(r, "done event refused") && strings.Contains(r, f.reason))
		}
		if !found {
			t.Errorf("%s: no dead letter saying %q among %q", f.name, f.reason, reasons)
		}
	}
	if r := load(); r != rev || state.Final != nil || state.Done[image.RoleDisk].Status != "" {
		t.Fatalf("the forgeries changed bob's request state (revision %d → %d): %+v", rev, r, state)
	}
	results, err := admin.Stream(ctx, messages.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := results.GetLastMsgForSubject(ctx, messages.ResultSubjectIn("bob", id)); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a result was published for bob's request before it completed: %v %s", err, msgData(msg))
	}

	// The converter starts: the real request completes with the resolution's files.
	converterCache := t.TempDir()
	c.Start("converter", append(as("converter_mac1"), "--store", "nats:"+cluster.Bucket, "--cache-dir", converterCache, "--target", "mac1")...)
	var res messages.Result
	cluster.WaitFor(t, "bob's result", 3*time.Minute, func() bool {
		msg, err := results.GetLastMsgForSubject(ctx, messages.ResultSubjectIn("bob", id))
		return err == nil && json.Unmarshal(msg.Data, &res) == nil
	})
	if res.Status != messages.ResultPrepared {
		t.Fatalf("bob's request: %+v", res)
	}
	for _, a := range state.Resolution.Assets {
		f := res.Files[a.Role]
		got := f.Digest
		if a.Role == image.RoleDisk {
			got = f.DerivedFrom // converted to raw on mac1
		}
		if got != a.Digest {
			t.Errorf("%s digest %s, the resolution has %s", a.Role, got, a.Digest)
		}
		if f.Object == nil || f.Object.Name != objectstore.Name(a.Digest) {
			t.Errorf("%s object %+v", a.Role, f.Object)
		}
	}
	if d := res.Files[image.RoleDisk]; d.DerivedFrom != disk.Digest || d.Host != "mac1" || !strings.HasPrefix(d.Path, converterCache+"/") {
		t.Errorf("bob's disk: %+v (want derived from %s, on mac1 under %s)", d, disk.Digest, converterCache)
	}
	if res.Signer != disk.Trust.Signer {
		t.Errorf("signer %q, the resolution has %q", res.Signer, disk.Trust.Signer)
	}
}

// deployment is deploy/nats as a three-node cluster, set up by admin, with
// some stage processes running as their own users.
type deployment struct {
	c       *cluster.Cluster
	m       *testmirror.Mirror
	as      func(user string) []string
	connect func(user string) (*nats.Conn, jetstream.JetStream, chan error)
}

func startDeployment(t *testing.T, stages ...string) deployment {
	t.Helper()
	passwords, pwFiles := deployPasswords(t)
	// Two converter hosts with users of their own (vmprep users converters).
	bin := cluster.Build(t)
	confs := deployWithHosts(t, bin, passwords, pwFiles, "mac1", "mac2")
	c, _ := cluster.NewNATSClusterFromConfigs(t, bin, confs)
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(64<<20, 16<<20))
	as := func(user string) []string {
		return []string{"--nats", c.NATS, "--user", user, "--password-file", pwFiles[user]}
	}
	if out, err := runVmprep(c, append([]string{"setup", "--store", "nats:" + cluster.Bucket, "--replicas", "3", "--hosts", "mac1,mac2"}, as("admin")...)...); err != nil {
		t.Fatalf("vmprep setup as admin: %v\n%s", err, out)
	}
	stageArgs := func(user string) []string {
		return append(as(user), "--store", "nats:"+cluster.Bucket, "--replicas", "3", "--cache-dir", t.TempDir(), "--drain-timeout", "2s")
	}
	for _, s := range stages {
		args := stageArgs(s)
		if s == "resolver" {
			args = append(args, "--mirror", m.URL, "--keyring", m.KeyringFile())
		}
		c.Start(s, args...)
	}

	connect := func(user string) (*nats.Conn, jetstream.JetStream, chan error) {
		t.Helper()
		errs := make(chan error, 64)
		nc, err := nats.Connect(c.NATS, deployCA(), nats.UserInfo(user, passwords[user]), nats.CustomInboxPrefix("_INBOX_"+user),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return nc, js, errs
	}
	return deployment{c: c, m: m, as: as, connect: connect}
}

func runVmprep(c *cluster.Cluster, args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(c.Bin, "vmprep"), args...).CombinedOutput()
	return string(out), err
}

// deadReasons lists the reasons of the dead letters on subject.
func deadReasons(ctx context.Context, t *testing.T, js jetstream.JetStream, subject string) []string {
	t.Helper()
	cons, err := js.OrderedConsumer(ctx, messages.StreamDead, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return out
		}
		var dl messages.DeadLetter
		if err := messages.Decode(msg.Data(), messages.TypeDeadLetter, &dl); err == nil {
			out = append(out, dl.Reason)
		}
	}
}

func msgData(m *jetstream.RawStreamMsg) string {
	if m == nil {
		return ""
	}
	return string(m.Data)
}

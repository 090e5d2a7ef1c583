package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestDeployHealing runs deploy/nats's three nodes with every stage as its
// own user. An object rewritten in place behind the verifier's back (its
// record still says verified) is caught by the client that pulls it, which
// may not delete it: the client reports it, the verifier's healer re-reads
// it, deletes it, and the next request fetches it again and succeeds, with
// no admin. A false report leaves a good object as it was. No stage may
// purge the object bucket, and only fetchers may write leases.
func TestDeployHealing(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	passwords, pwFiles := deployPasswords(t)
	deployDir := filepath.Join("..", "..", "deploy", "nats")
	var confs []string
	for i := 1; i <= 3; i++ {
		confs = append(confs, filepath.Join(deployDir, fmt.Sprintf("node%d.conf", i)))
	}
	c, _ := cluster.NewNATSClusterFromConfigs(t, cluster.Build(t), confs)
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(32<<20, 8<<20))
	as := func(user string) []string {
		return []string{"--nats", c.NATS, "--user", user, "--password-file", pwFiles[user]}
	}
	if out, err := exec.Command(filepath.Join(c.Bin, "vmprep"), append([]string{"setup", "--store", "nats:" + cluster.Bucket, "--replicas", "3"}, as("admin")...)...).CombinedOutput(); err != nil {
		t.Fatalf("vmprep setup as admin: %v\n%s", err, out)
	}
	stageArgs := func(user string) []string {
		return append(as(user), "--store", "nats:"+cluster.Bucket, "--replicas", "3", "--cache-dir", t.TempDir(), "--drain-timeout", "2s")
	}
	stages := []*cluster.Proc{
		c.Start("resolver", append(stageArgs("resolver"), "--mirror", m.URL, "--keyring", m.KeyringFile())...),
		c.Start("fetcher", stageArgs("fetcher")...),
		c.Start("verifier", stageArgs("verifier")...),
	}
	prepare := func() *cluster.PrepareRun {
		return c.Prepare(image.ArchAMD64, image.FormatQCOW2, append(as("alice")[2:], "--cache-dir", t.TempDir(), "--timeout", "3m")...)
	}
	first := prepare().Result(t, 3*time.Minute)
	checkPrepared(t, "alice", m, "24.04", image.ArchAMD64, first, func(p string) string { return p })

	connect := func(user string, errs chan<- error) (*nats.Conn, jetstream.JetStream) {
		t.Helper()
		opts := []nats.Option{deployCA(), nats.UserInfo(user, passwords[user]), nats.CustomInboxPrefix("_INBOX_" + user)}
		if errs != nil {
			opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
		}
		nc, err := nats.Connect(c.NATS, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return nc, js
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, admin := connect("admin", nil)
	objs, err := objectstore.Bind(ctx, admin, cluster.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	disk := m.Digest(m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk))
	kernel := m.Digest(m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleKernel))
	stored, err := objs.Stat(ctx, disk)
	if err != nil {
		t.Fatal(err)
	}

	// Rewritten in place: the first chunk's bytes changed (deleted, and
	// stored again with a byte flipped, now last), same version, same
	// size, so the verifier's record still matches it.
	stream, err := admin.Stream(ctx, objectstore.StreamName(cluster.Bucket))
	if err != nil {
		t.Fatal(err)
	}
	chunkSubj := "$O." + cluster.Bucket + ".C." + stored.NUID
	chunk, err := stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(chunkSubj))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(ctx, chunk.Sequence); err != nil {
		t.Fatal(err)
	}
	chunk.Data[0] ^= 0xff
	if _, err := admin.Publish(ctx, chunkSubj, chunk.Data); err != nil {
		t.Fatal(err)
	}

	// The request that finds it ends, saying so; before the fix alice
	// could not delete it and every later request failed the same way.
	bad := prepare()
	select {
	case err := <-waitRun(bad):
		if err == nil || !strings.Contains(bad.Stderr(), "reported") {
			t.Fatalf("a request pulling a corrupt object: exit %v\n%s", err, bad.Stderr())
		}
	case <-ctx.Done():
		t.Fatal("a request pulling a corrupt object did not end")
	}
	cluster.WaitFor(t, "the healer to delete the corrupt object", 2*time.Minute, func() bool {
		cur, err := objs.Stat(ctx, disk)
		return errors.Is(err, objectstore.ErrNotFound) || (err == nil && cur.NUID != stored.NUID)
	})
	healed := prepare().Result(t, 3*time.Minute)
	checkPrepared(t, "alice after healing", m, "24.04", image.ArchAMD64, healed, func(p string) string { return p })

	// A false report (alice's, naming the good kernel) leaves it as it is.
	good, err := objs.Stat(ctx, kernel)
	if err != nil {
		t.Fatal(err)
	}
	_, aliceJS := connect("alice", nil)
	ref := messages.ObjectRef{Bucket: good.Bucket, Name: good.Name, NUID: good.NUID, Size: good.Size}
	if err := client.ReportCorrupt(ctx, aliceJS, ref, "a lie"); err != nil {
		t.Fatal(err)
	}
	verified, err := admin.KeyValue(ctx, messages.BucketVerified)
	if err != nil {
		t.Fatal(err)
	}
	cluster.WaitFor(t, "the healer to answer the false report", 2*time.Minute, func() bool {
		e, err := verified.Get(ctx, string(kernel.Algorithm)+"."+kernel.Hex)
		var rec struct {
			ReportSeq uint64 `json:"report_seq"`
		}
		return err == nil && json.Unmarshal(e.Value(), &rec) == nil && rec.ReportSeq > 0
	})
	if now, err := objs.Stat(ctx, kernel); err != nil || now.NUID != good.NUID {
		t.Fatalf("a good object falsely reported corrupt was changed: %+v %v", now, err)
	}

	// Refused by the server: a purge of the bucket by any stage (a filter
	// in the body or none), a lease written by anyone but a fetcher.
	denials := []struct {
		user, subject string
		do            func(ctx context.Context, js jetstream.JetStream) error
	}{}
	for _, user := range []string{"fetcher", "verifier", "converter", "resolver", "alice"} {
		denials = append(denials, struct {
			user, subject string
			do            func(ctx context.Context, js jetstream.JetStream) error
		}{user, "$JS.API.STREAM.PURGE." + objectstore.StreamName(cluster.Bucket), func(ctx context.Context, js jetstream.JetStream) error {
			s, err := js.Stream(ctx, objectstore.StreamName(cluster.Bucket))
			if err != nil {
				return err
			}
			return s.Purge(ctx)
		}})
	}
	for _, user := range []string{"verifier", "converter", "resolver", "alice"} {
		denials = append(denials, struct {
			user, subject string
			do            func(ctx context.Context, js jetstream.JetStream) error
		}{user, "$KV." + messages.BucketLeases + ".", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.Publish(ctx, "$KV."+messages.BucketLeases+"."+string(disk.Algorithm)+"."+disk.Hex, []byte(`{"holder":"forger"}`))
			return err
		}})
	}
	for _, d := range denials {
		t.Run(d.user+" "+d.subject, func(t *testing.T) {
			errs := make(chan error, 16)
			_, js := connect(d.user, errs)
			dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
			defer dcancel()
			if err := d.do(dctx, js); err == nil {
				t.Fatalf("%s: %s allowed", d.user, d.subject)
			}
			deadline := time.After(10 * time.Second)
			for {
				select {
				case err := <-errs:
					if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+d.subject) {
						return
					}
				case <-deadline:
					t.Fatalf("%s: no permissions violation naming %q", d.user, d.subject)
				}
			}
		})
	}
	// Orphaned chunks (a put cut off before its meta, as the fetcher user
	// leaves them) are collected with the verifier user's rights; the
	// stored objects are not touched.
	_, fetcherJS := connect("fetcher", nil)
	orphan := "$O." + cluster.Bucket + ".C.orphan" + fmt.Sprint(time.Now().UnixNano())
	for range 2 {
		if _, err := fetcherJS.Publish(ctx, orphan, []byte("chunk of an interrupted put")); err != nil {
			t.Fatal(err)
		}
	}
	_, verifierJS := connect("verifier", nil)
	sweeper, err := objectstore.Bind(ctx, verifierJS, cluster.Bucket, objectstore.WithStallTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	swept, err := sweeper.Sweep(ctx, 2*time.Second)
	if err != nil || len(swept) != 1 || "$O."+cluster.Bucket+".C."+swept[0].NUID != orphan {
		t.Errorf("sweep as the verifier: %+v, %v; want the orphan %s only", swept, err, orphan)
	}
	if info, err := objs.Stat(ctx, disk); err != nil {
		t.Errorf("the disk after the sweep: %v", err)
	} else if r, err := objs.Open(ctx, info); err != nil {
		t.Errorf("the disk after the sweep: %v", err)
	} else {
		if n, err := io.Copy(io.Discard, r); err != nil || n != info.Size {
			t.Errorf("the disk after the sweep reads %d of %d bytes: %v", n, info.Size, err)
		}
		r.Close()
	}
	if n, err := stream.Info(ctx); err != nil || n.State.Msgs == 0 {
		t.Errorf("the object bucket after the purge attempts: %v, %v", n, err)
	}
	for _, p := range stages {
		if out := p.Output(); strings.Contains(strings.ToLower(out), "permissions violation") {
			t.Errorf("%s was refused something it needs:\n%s", p.Name, out)
		}
	}
}

// waitRun reports the end of a prepare run without failing on its error.
func waitRun(r *cluster.PrepareRun) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- r.Wait() }()
	return ch
}

package pipeline_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/internal/natsembed"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestServerRestartMidRequest stops the NATS server (file storage) while the
// disk is downloading and starts it again on the same port and directory: the
// stages and the client reconnect and the request completes.
func TestServerRestartMidRequest(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithDiskSize(64<<20, 24<<20))
	e := newEnv(t, m)
	addr, jsDir := freeAddr(t), t.TempDir()
	srv, err := natsembed.Start(natsembed.Options{StoreDir: jsDir, Listen: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Shutdown() }()
	connect := func() *nats.Conn {
		nc, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	stagesConn, clientConn := connect(), connect()
	ctx, cancel := context.WithCancel(context.Background())
	stagesDone := make(chan error, 1)
	js, err := jetstream.New(stagesConn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pipeline.Setup(ctx, js, pipeline.SetupConfig{}); err != nil {
		t.Fatal(err)
	}
	go func() { stagesDone <- pipeline.RunStages(ctx, stagesConn, pipeline.AllStages, e.deps) }()
	defer func() { cancel(); <-stagesDone }()

	diskRel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	size := int64(len(m.Content(diskRel)))
	m.Throttle(size / 3)

	type outcome struct {
		res messages.Result
		err error
	}
	got := make(chan outcome, 1)
	go func() {
		pctx, pcancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer pcancel()
		res, err := testutil.Prepare(pctx, clientConn, messages.PrepareRequest{
			RequestID: "restart", Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}, Format: catalog.FormatRaw,
		}, nil)
		got <- outcome{res, err}
	}()

	ingest := filepath.Join(e.cache, "ingest")
	deadline := time.Now().Add(time.Minute)
	for {
		ents, _ := os.ReadDir(ingest)
		if len(ents) > 0 && m.BytesServed(diskRel) > size/10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the disk download never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	srv.Shutdown()
	time.Sleep(300 * time.Millisecond)
	if srv, err = natsembed.Start(natsembed.Options{StoreDir: jsDir, Listen: addr}); err != nil {
		t.Fatalf("restart: %v", err)
	}
	m.Throttle(0)

	o := <-got
	if o.err != nil {
		t.Fatalf("prepare across a server restart: %v", o.err)
	}
	if o.res.Status != messages.ResultPrepared {
		t.Fatalf("status %s: %+v", o.res.Status, o.res.Failure)
	}
	if sum := fileSHA256(t, o.res.Disk); sum != qemuRawSHA256(t, m, diskRel) {
		t.Errorf("raw disk differs from qemu-img's output")
	}
}

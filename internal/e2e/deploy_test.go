package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/download"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/resolve"
	"github.com/vmprep/vmprep/pkg/store"
)

// TestDeployNATSConfig runs the pipeline on a server started from
// deploy/nats-server.conf: stages as the "stage" user, a prepare request as
// the "client" user, and checks that a client cannot publish asset events.
func TestDeployNATSConfig(t *testing.T) {
	t.Setenv("VMPREP_STAGE_PASSWORD", "stage-secret")
	t.Setenv("VMPREP_CLIENT_PASSWORD", "client-secret")
	opts, err := server.ProcessConfigFile(filepath.Join("..", "..", "deploy", "nats-server.conf"))
	if err != nil {
		t.Fatalf("deploy/nats-server.conf: %v", err)
	}
	opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	opts.StoreDir = t.TempDir()
	opts.NoSigs, opts.NoLog = true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	defer srv.Shutdown()

	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	cat, err := catalog.New(catalog.WithMirror(m.URL), catalog.WithKeyring(m.Keyring()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stageConn, err := nats.Connect(srv.ClientURL(), nats.UserInfo("stage", "stage-secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer stageConn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	stages, err := pipeline.NewStages(ctx, stageConn, pipeline.AllStages, pipeline.Deps{
		Store: st, Resolver: resolve.New(cat), Downloader: download.New(), Concurrency: 2,
	})
	if err != nil {
		t.Fatalf("stages as the stage user: %v", err)
	}
	done := make(chan struct{})
	go func() { stages.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	violations := make(chan error, 10)
	clientConn, err := nats.Connect(srv.ClientURL(), nats.UserInfo("client", "client-secret"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer clientConn.Close()
	pctx, pcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer pcancel()
	res, err := testutil.Prepare(pctx, clientConn, messages.PrepareRequest{
		Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}, Format: catalog.FormatQCOW2,
	}, func(messages.Progress) {})
	if err != nil {
		t.Fatalf("prepare as the client user: %v", err)
	}
	if res.Status != messages.ResultPrepared {
		t.Fatalf("prepare as the client user: %+v", res.Failure)
	}

	// A client must not be able to inject asset events.
	js, err := jetstream.New(clientConn)
	if err != nil {
		t.Fatal(err)
	}
	ictx, icancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer icancel()
	if _, err := js.Publish(ictx, messages.SubjectFetch, []byte(`{"v":1}`)); err == nil {
		t.Fatal("the client user published an asset event")
	}
	select {
	case err := <-violations:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Errorf("unexpected async error: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("no permissions violation reported for the client's asset event")
	}
}

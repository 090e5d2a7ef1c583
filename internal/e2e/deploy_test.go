package e2e

import (
	"context"
	"encoding/xml"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.yaml.in/yaml/v3"

	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/resolve"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestDeployNATSConfig runs the pipeline on a single server started from
// deploy/nats-server.conf (the users of deploy/nats/auth.conf): every stage
// in one process as admin (what vmprep serve does), a prepare request as
// alice in her namespace, and checks that alice cannot publish asset events.
// TestDeployPermissions runs each stage as its own user on a cluster.
func TestDeployNATSConfig(t *testing.T) {
	passwords, _ := deployPasswords(t)
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

	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	cat, err := catalog.New(catalog.WithMirror(m.URL), catalog.WithKeyring(m.Keyring()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stageConn, err := nats.Connect(srv.ClientURL(), nats.UserInfo("admin", passwords["admin"]), nats.CustomInboxPrefix("_INBOX_admin"), deployCA())
	if err != nil {
		t.Fatal(err)
	}
	defer stageConn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	stages, err := pipeline.NewStages(ctx, stageConn, pipeline.AllStages, pipeline.Deps{
		Store: st, Resolver: resolve.New(cat), Downloader: download.New(), Concurrency: 2,
	})
	if err != nil {
		t.Fatalf("stages as the admin user: %v", err)
	}
	done := make(chan struct{})
	go func() { stages.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	violations := make(chan error, 10)
	clientConn, err := nats.Connect(srv.ClientURL(), nats.UserInfo("alice", passwords["alice"]), nats.CustomInboxPrefix("_INBOX_alice"), deployCA(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer clientConn.Close()
	pctx, pcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer pcancel()
	alice, err := client.New(clientConn, client.WithNamespace("alice"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := alice.Prepare(pctx, messages.PrepareRequest{
		Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}, Format: image.FormatQCOW2,
	})
	if err != nil {
		t.Fatalf("prepare as alice: %v", err)
	}
	if res.Status != messages.ResultPrepared {
		t.Fatalf("prepare as alice: %+v", res.Failure)
	}

	// alice must not be able to inject asset events.
	js, err := jetstream.New(clientConn)
	if err != nil {
		t.Fatal(err)
	}
	ictx, icancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer icancel()
	if _, err := js.Publish(ictx, messages.SubjectFetch, []byte(`{"v":1}`)); err == nil {
		t.Fatal("alice published an asset event")
	}
	select {
	case err := <-violations:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Errorf("unexpected async error: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("no permissions violation reported for alice's asset event")
	}
}

// TestDeployServiceUnits checks what .ci/run's systemd-analyze verify cannot:
// each unit runs its stage as that stage's NATS user of deploy/nats/auth.conf
// with a password handed over by LoadCredential (never inline), hardened and
// able to write only its cache; and the launchd plist (well-formed XML) does
// the same for a targeted macOS converter.
func TestDeployServiceUnits(t *testing.T) {
	auth, err := os.ReadFile(filepath.Join("..", "..", "deploy", "nats", "auth.conf"))
	if err != nil {
		t.Fatal(err)
	}
	units := map[string]string{ // unit → NATS user
		"vmprep-resolver.service": "resolver", "vmprep-fetcher.service": "fetcher",
		"vmprep-verifier.service": "verifier", "vmprep-converter.service": "converter_%l", // this host's own user

		"vmprep-setup.service": "admin",
	}
	for unit, user := range units {
		t.Run(unit, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "systemd", unit))
			if err != nil {
				t.Fatal(err)
			}
			settings := map[string][]string{}
			for _, line := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
					settings[k] = append(settings[k], v)
				}
			}
			if !strings.Contains(string(auth), "user: "+user+"\n") && !strings.HasPrefix(user, "converter_") {
				t.Errorf("auth.conf has no user %s", user)
			}
			exec := strings.Join(settings["ExecStart"], " ")
			for _, want := range []string{"--user " + user + " ", "--password-file %d/nats-password"} {
				if !strings.Contains(exec, want) {
					t.Errorf("ExecStart %q lacks %q", exec, want)
				}
			}
			if got := strings.Join(settings["LoadCredential"], " "); got != "nats-password:/etc/vmprep/"+user+".password" {
				t.Errorf("LoadCredential=%s", got)
			}
			for k, want := range map[string]string{"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": ""} {
				if got := settings[k]; len(got) != 1 || got[0] != want {
					t.Errorf("%s=%v, want %q", k, got, want)
				}
			}
			if settings["DynamicUser"] == nil && settings["User"] == nil {
				t.Error("neither DynamicUser nor a dedicated User")
			}
			if user != "admin" && len(settings["CacheDirectory"]) != 1 {
				t.Errorf("CacheDirectory=%v", settings["CacheDirectory"])
			}
			if strings.Contains(strings.ToLower(string(b)), "password=") || strings.Contains(string(b), "NATS_CREDS") {
				t.Error("a secret (or a credentials variable) inline in the unit")
			}
		})
	}

	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "launchd", "com.vmprep.converter.plist"))
	if err != nil {
		t.Fatal(err)
	}
	var plist struct {
		Dict struct {
			Inner []byte `xml:",innerxml"`
		} `xml:"dict"`
	}
	if err := xml.Unmarshal(b, &plist); err != nil {
		t.Fatalf("launchd plist is not well-formed XML: %v", err)
	}
	dec := xml.NewDecoder(strings.NewReader(string(plist.Dict.Inner)))
	var args []string
	inArgs := false
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch tk := tok.(type) {
		case xml.StartElement:
			inArgs = inArgs || tk.Name.Local == "array"
		case xml.EndElement:
			if tk.Name.Local == "array" {
				inArgs = false
			}
		case xml.CharData:
			if s := strings.TrimSpace(string(tk)); inArgs && s != "" {
				args = append(args, s)
			}
		}
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{"/usr/local/bin/converter ", "--target mac-07 ", "--user converter_mac-07 ", "--password-file /", "--store nats:vmprep"} {
		if !strings.Contains(joined, want) {
			t.Errorf("launchd ProgramArguments %q lack %q", joined, want)
		}
	}
}

// TestComposeVolumesInPathOrder: docker-compose 1.x sorts a service's
// volumes (by source, then container path) when it merges an override file
// (the way deploy/docker/README.md sets a mirror), and a service whose list
// then differs from its running container's is recreated: listed in another
// order, adding an override restarted all three NATS nodes at once.
func TestComposeVolumesInPathOrder(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "docker", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Services map[string]struct {
			Volumes []string `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	if len(file.Services) == 0 {
		t.Fatal("docker-compose.yml: no services")
	}
	for name, svc := range file.Services {
		var sources, paths []string
		for _, v := range svc.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) < 2 {
				t.Errorf("service %s: volume %q has no container path", name, v)
				continue
			}
			sources, paths = append(sources, parts[0]), append(paths, parts[1])
		}
		if !slices.IsSorted(sources) || !slices.IsSorted(paths) {
			t.Errorf("service %s: volumes %q, want them sorted by source and by container path", name, svc.Volumes)
		}
	}
}

// TestDockerfileDeclaresNoVolume: a VOLUME in the image gives every container
// an anonymous volume, and docker-compose leaves one behind at each
// scale-down or recreate, out of reach of `down -v` (the operator's trial of
// deploy/docker left eight).
func TestDockerfileDeclaresNoVolume(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.EqualFold(f[0], "VOLUME") {
			t.Errorf("Dockerfile:%d: %s", i+1, line)
		}
	}
}

// TestComposeProjectAndVolumes: the compose project is named vmprep whatever
// its directory is called (it was "docker", so two checkouts on one host
// collided), and every stage whose cache outlives a `down`/`up` has a named
// volume for it: the resolver's stored resolutions (without them a fully
// stored image needed the mirror again) and each converter host's cache.
func TestComposeProjectAndVolumes(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "docker")
	env, err := os.ReadFile(filepath.Join(dir, ".env"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Split(string(env), "\n"), "COMPOSE_PROJECT_NAME=vmprep") {
		t.Errorf("deploy/docker/.env does not name the project vmprep:\n%s", env)
	}
	b, err := os.ReadFile(filepath.Join(dir, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Services map[string]struct {
			Volumes []string `yaml:"volumes"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, svc := range []string{"resolver", "converter-host1", "converter-host2"} {
		found := false
		for _, v := range file.Services[svc].Volumes {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && parts[1] == "/var/cache/vmprep" {
				if _, named := file.Volumes[parts[0]]; named {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("service %s has no named volume at /var/cache/vmprep (its cache, VMPREP_CACHE_DIR): volumes %q", svc, file.Services[svc].Volumes)
		}
	}
}

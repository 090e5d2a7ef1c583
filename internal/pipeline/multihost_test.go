package pipeline_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	"github.com/vmprep/vmprep/pkg/objectstore"
	"github.com/vmprep/vmprep/pkg/place"
	"github.com/vmprep/vmprep/pkg/store"
)

const bucket = "vmprep"

// fleet is one NATS server and stage sets standing for separate hosts: each
// has its own cache directory, so a path handed from one to another names a
// file that is not there.
type fleet struct {
	t     *testing.T
	srv   *natsembed.Server
	env   *env
	hosts map[string]*store.Store
}

func newFleet(t *testing.T, m *testmirror.Mirror) *fleet {
	t.Helper()
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return &fleet{t: t, srv: srv, env: newEnv(t, m), hosts: map[string]*store.Store{}}
}

func (f *fleet) conn() *nats.Conn {
	f.t.Helper()
	nc, err := f.srv.Connect()
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(nc.Close)
	return nc
}

// host runs stages on a host of its own (own cache dir, own connection).
func (f *fleet) host(name string, stages []string, tweak func(*pipeline.Deps)) *store.Store {
	f.t.Helper()
	st, err := store.Open(filepath.Join(f.t.TempDir(), name))
	if err != nil {
		f.t.Fatal(err)
	}
	d := f.env.deps
	d.Store, d.ObjectBucket, d.Host = st, bucket, name
	if tweak != nil {
		tweak(&d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := pipeline.NewStages(ctx, f.conn(), stages, d)
	if err != nil {
		cancel()
		f.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	f.t.Cleanup(func() { cancel(); <-done })
	f.hosts[name] = st
	return st
}

func (f *fleet) objects() *objectstore.Store {
	f.t.Helper()
	js, _ := jetstream.New(f.conn())
	o, err := objectstore.Bind(context.Background(), js, bucket)
	if err != nil {
		f.t.Fatal(err)
	}
	return o
}

// under reports whether path is inside the cache of host.
func (f *fleet) under(host, path string) bool {
	return strings.HasPrefix(path, f.hosts[host].Root()+string(os.PathSeparator))
}

func TestMultiHostTargetedAndClientPlacement(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64, catalog.ArchARM64))
	f := newFleet(t, m)
	f.host("gateway", []string{messages.StageResolver, messages.StageCollector}, nil)
	f.host("fetch1", []string{messages.StageFetcher}, nil)
	f.host("fetch2", []string{messages.StageFetcher}, nil)
	f.host("check", []string{messages.StageVerifier}, nil)
	f.host("mac1", []string{messages.StageConverter}, func(d *pipeline.Deps) { d.TargetedOnly = true })
	f.host("conv", []string{messages.StageConverter}, nil)
	client := f.conn()

	// checkView: a codename is the same image as its number, so the view is
	// images/ubuntu/24.04/<arch>/ on every host, naming the build it holds.
	checkView := func(t *testing.T, view string, arch catalog.Arch) {
		t.Helper()
		if !strings.HasSuffix(view, filepath.Join("images", "ubuntu", "24.04", string(arch))) {
			t.Errorf("view %s is not the 24.04 view", view)
		}
		if b, err := os.ReadFile(filepath.Join(view, store.ViewSerialName)); err != nil || string(b) != testmirror.DefaultUbuntuSerial+"\n" {
			t.Errorf("view serial %q, %v", b, err)
		}
	}
	for _, arch := range []catalog.Arch{catalog.ArchAMD64, catalog.ArchARM64} {
		version := "24.04"
		if arch == catalog.ArchARM64 {
			version = "noble"
		}
		spec := catalog.ImageSpec{Distro: "ubuntu", Version: version, Arch: arch}
		diskSrc := filepath.Join(m.Dir, filepath.FromSlash(m.Path("ubuntu", "24.04", arch, catalog.RoleDisk)))
		t.Run("target mac1 raw "+string(arch), func(t *testing.T) {
			res := prepare(t, client, messages.PrepareRequest{RequestID: "mac1-" + string(arch), Spec: spec, Format: catalog.FormatRaw, Target: "mac1"})
			if res.Status != messages.ResultPrepared {
				t.Fatalf("%+v", res.Failure)
			}
			if res.Host != "mac1" || res.Target != "mac1" {
				t.Fatalf("result host %q target %q, want mac1", res.Host, res.Target)
			}
			for role, file := range res.Files {
				if file.Host != "mac1" || !f.under("mac1", file.Path) || file.Object == nil {
					t.Errorf("%s: %+v is not a file on mac1 with its object", role, file)
				}
			}
			if !f.under("mac1", res.View) {
				t.Errorf("view %s is not on mac1", res.View)
			}
			checkView(t, res.View, arch)
			if got, want := testutil.FileSHA256(t, res.Disk), testutil.QemuRawSHA256(t, diskSrc); got != want {
				t.Errorf("raw disk on mac1 %s, qemu-img convert gives %s", got, want)
			}
			if res.DiskFormat != catalog.FormatRaw || res.Files[catalog.RoleDisk].DerivedFrom != m.Digest(m.Path("ubuntu", "24.04", arch, catalog.RoleDisk)) {
				t.Errorf("disk file %+v", res.Files[catalog.RoleDisk])
			}
			if arch == catalog.ArchARM64 && filepath.Base(mustReadlink(t, filepath.Join(res.View, "vmlinux"))) == "" {
				t.Error("arm64 kernel not unpacked into the view")
			}
			// Only mac1 received files: the raw disk was made there, and no
			// other host holds a derived disk.
			for name, st := range f.hosts {
				if name == "mac1" {
					continue
				}
				if ents, _ := os.ReadDir(filepath.Join(st.Root(), "derived")); len(ents) > 0 && name != "conv" {
					t.Errorf("host %s has derived files %v", name, ents)
				}
			}
		})
		for _, format := range []catalog.DiskFormat{catalog.FormatRaw, catalog.FormatQCOW2} {
			t.Run(fmt.Sprintf("client %s %s", format, arch), func(t *testing.T) {
				res := prepare(t, client, messages.PrepareRequest{RequestID: fmt.Sprintf("client-%s-%s", format, arch), Spec: spec, Format: format, ClientConverts: true})
				if res.Status != messages.ResultPrepared {
					t.Fatalf("%+v", res.Failure)
				}
				if res.Host != "" || res.Disk != "" {
					t.Fatalf("an untargeted result names a host or path: %q %q", res.Host, res.Disk)
				}
				for role, file := range res.Files {
					if file.Object == nil || file.Path != "" {
						t.Fatalf("%s: %+v: want an object and no path", role, file)
					}
				}
				local, err := store.Open(t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				p := &place.Placer{Store: local, Objects: f.objects()}
				out, err := p.Localize(context.Background(), res, "laptop")
				if err != nil {
					t.Fatal(err)
				}
				if out.Host != "laptop" || !strings.HasPrefix(out.Disk, local.Root()) || out.DiskFormat != format {
					t.Fatalf("localized result %+v", out)
				}
				checkView(t, out.View, arch)
				want := testutil.FileSHA256(t, diskSrc)
				if format == catalog.FormatRaw {
					want = testutil.QemuRawSHA256(t, diskSrc)
				}
				if got := testutil.FileSHA256(t, out.Disk); got != want {
					t.Errorf("local disk %s, want %s", got, want)
				}
				if got, want := testutil.FileSHA256(t, out.Initramfs), m.Digest(m.Path("ubuntu", "24.04", arch, catalog.RoleInitramfs)).Hex; got != want {
					t.Errorf("local initramfs %s, want %s", got, want)
				}
				// Nothing on the shared converter was made for this request.
				if ents, _ := os.ReadDir(filepath.Join(f.hosts["conv"].Root(), "derived")); len(ents) > 0 {
					t.Errorf("the shared converter converted for a client that converts itself: %v", ents)
				}
			})
		}
	}
}

func mustReadlink(t *testing.T, p string) string {
	t.Helper()
	target, err := os.Readlink(p)
	if err != nil {
		t.Fatal(err)
	}
	return target
}

// Concurrent requests for one image, over three fetchers: the origin serves
// each asset once, and every request gets the image.
func TestMultiHostOneOriginDownloadPerAsset(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithDiskSize(64<<20, 24<<20))
	f := newFleet(t, m)
	// As the stage processes do by default: a stored resolution is reused.
	f.env.deps.ResolutionMaxAge = time.Hour
	f.host("gateway", []string{messages.StageResolver, messages.StageCollector, messages.StageVerifier}, nil)
	for i := 1; i <= 3; i++ {
		f.host(fmt.Sprintf("fetch%d", i), []string{messages.StageFetcher}, nil)
	}
	diskRel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	m.Throttle(int64(len(m.Content(diskRel))) / 2) // a couple of seconds: requests overlap
	client := f.conn()
	const n = 12
	var wg sync.WaitGroup
	results := make([]messages.Result, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = prepare(t, client, messages.PrepareRequest{
				RequestID: fmt.Sprintf("burst-%d", i), Format: catalog.FormatQCOW2, ClientConverts: true,
				Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64},
			})
		}()
	}
	wg.Wait()
	for i, res := range results {
		if res.Status != messages.ResultPrepared {
			t.Fatalf("request %d: %+v", i, res.Failure)
		}
	}
	for _, role := range []catalog.Role{catalog.RoleKernel, catalog.RoleInitramfs, catalog.RoleDisk} {
		rel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, role)
		if got, size := m.BytesServed(rel), int64(len(m.Content(rel))); got != size {
			t.Errorf("%s: origin served %d bytes for a %d-byte file (%d requests)", role, got, size, m.Requests(rel))
		}
	}
	if got := m.Requests(m.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)); got != 1 {
		t.Errorf("the signed manifest was fetched %d times for one burst", got)
	}
}

// A damaged object in the bucket is caught by the verifier, deleted and
// fetched again from the origin; the request still gets exact files.
func TestMultiHostCorruptObjectIsRefetched(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	f := newFleet(t, m)
	f.host("gateway", []string{messages.StageResolver, messages.StageCollector, messages.StageFetcher, messages.StageVerifier}, nil)
	client := f.conn()
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}
	first := prepare(t, client, messages.PrepareRequest{RequestID: "first", Spec: spec, Format: catalog.FormatQCOW2, ClientConverts: true})
	if first.Status != messages.ResultPrepared {
		t.Fatalf("%+v", first.Failure)
	}
	diskRel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	d := m.Digest(diskRel)
	objs := f.objects()
	info, err := objs.Stat(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	// Bit rot: a new version of the object whose bytes differ (its own
	// digest is consistent, so only checking against the signed one helps).
	bad := m.Content(diskRel)
	bad = append(bytes.Clone(bad[:len(bad)/2]), append([]byte{bad[len(bad)/2] ^ 0xff}, bad[len(bad)/2+1:]...)...)
	badPath := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(badPath, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(client)
	if err := rewriteObject(js, info, badPath); err != nil {
		t.Fatal(err)
	}
	served := m.BytesServed(diskRel)
	second := prepare(t, client, messages.PrepareRequest{RequestID: "second", Spec: spec, Format: catalog.FormatQCOW2, ClientConverts: true})
	if second.Status != messages.ResultPrepared {
		t.Fatalf("%+v", second.Failure)
	}
	if m.BytesServed(diskRel) == served {
		t.Fatal("the damaged object was not fetched again from the origin")
	}
	now, err := objs.Stat(context.Background(), d)
	if err != nil || now.NUID == info.NUID {
		t.Fatalf("object after the refetch: %+v %v", now, err)
	}
	local, _ := store.Open(t.TempDir())
	out, err := (&place.Placer{Store: local, Objects: objs}).Localize(context.Background(), second, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	if got := testutil.FileSHA256(t, out.Disk); got != d.Hex {
		t.Fatalf("disk %s, want %s", got, d.Hex)
	}
}

// rewriteObject replaces the object's bytes with the file's, keeping its
// name (with the library's put, whose object digest is then consistent):
// what a damaged copy looks like to a reader.
func rewriteObject(js jetstream.JetStream, info objectstore.Info, path string) error {
	obs, err := js.ObjectStore(context.Background(), bucket)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	_, err = obs.PutBytes(context.Background(), info.Name, data)
	return err
}

// A request for a target host that no converter has ever served fails at
// once, saying what to start, instead of waiting forever.
func TestMultiHostUnknownTarget(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	f := newFleet(t, m)
	f.host("gateway", []string{messages.StageResolver, messages.StageCollector, messages.StageFetcher, messages.StageVerifier}, nil)
	res := prepare(t, f.conn(), messages.PrepareRequest{RequestID: "nobody", Format: catalog.FormatRaw, Target: "mac9",
		Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}})
	if res.Status != messages.ResultFailed || res.Failure == nil || !strings.Contains(res.Failure.Cause, "converter --target mac9") {
		t.Fatalf("%+v %+v", res, res.Failure)
	}
}

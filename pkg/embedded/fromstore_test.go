package embedded_test

import (
	"context"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestFromStore: nothing stored, no answer (and no error); once a
// deployment prepared the image, FromStore gives its paths without one.
func TestFromStore(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	opts := []embedded.Option{embedded.WithCacheDir(t.TempDir()), embedded.WithShortPulls(), embedded.WithResolutionMaxAge(time.Hour),
		embedded.WithCatalog(catalog.WithMirror(m.URL), catalog.WithKeyring(m.Keyring()))}
	req := client.Request{Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}, Format: catalog.FormatRaw}
	if _, ok, err := embedded.FromStore(ctx, req, opts...); ok || err != nil {
		t.Fatalf("FromStore on an empty cache = %v, %v; want no answer, no error", ok, err)
	}
	d, err := embedded.Start(ctx, opts...)
	if err != nil {
		t.Fatal(err)
	}
	prepared, err := d.Client().Prepare(ctx, req)
	if cerr := d.Close(); err != nil || cerr != nil {
		t.Fatalf("Prepare: %v; Close: %v", err, cerr)
	}
	res, ok, err := embedded.FromStore(ctx, req, opts...)
	if !ok || err != nil {
		t.Fatalf("FromStore after a prepare = %v, %v", ok, err)
	}
	if res.Status != messages.ResultPrepared || res.RequestID == "" || res.Disk != prepared.Disk || res.Kernel != prepared.Kernel ||
		res.Initramfs != prepared.Initramfs || res.View != prepared.View || res.ResolvedFrom != messages.ResolvedFromCache {
		t.Errorf("FromStore = %+v\nwant the paths of %+v", res, prepared)
	}
}

package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/internal/kernel"
	"github.com/vmprep/vmprep/internal/qcow2"
	"github.com/vmprep/vmprep/internal/resolve"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestClassify: the one classification of handler errors, fed with errors
// the domain packages really return where that is cheap to provoke.
func TestClassify(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	_, notQcow2 := qcow2.OpenFile(write("raw.img", make([]byte, 4096)))
	_, truncatedQcow2 := qcow2.OpenFile(write("short.qcow2", []byte("QFI\xfb\x00\x00\x00\x03")))
	tooBig := st.CheckFree("", 1<<62)
	plainKernel := kernel.Unpack(context.Background(), write("vmlinuz", make([]byte, 100)), filepath.Join(dir, "vmlinux"), 0)
	_, badName := st.LinkImage(t.Context(), image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "amd64"}, "../escape", filepath.Join(dir, "raw.img"))
	cancelled := &download.Error{URL: "https://example.org/d", Op: "request", Err: fmt.Errorf("%w (last error: read body: EOF)", context.DeadlineExceeded)}

	tests := []struct {
		name string
		err  error
		want Class
	}{
		{"marked poison", stage.Poison(errors.New("unreadable event")), Poison},
		{"poison wins over a permanent cause", stage.Poison(notQcow2), Poison},
		{"marked permanent", stage.Permanent(errors.New("blob gone")), Permanent},
		{"download gave up on a retryable failure", &download.Error{Op: "request", StatusCode: 503, Retryable: true}, Retry},
		{"download refused", &download.Error{Op: "request", StatusCode: 404}, Permanent},
		{"download ended by its context", cancelled, Retry},
		{"wrapped context deadline", fmt.Errorf("convert: %w", context.DeadlineExceeded), Retry},
		{"resolve transient", &resolve.Error{Op: resolve.OpManifest, Retryable: true, Err: errors.New("503")}, Retry},
		{"resolve permanent", &resolve.Error{Op: resolve.OpPlan, Err: catalog.ErrUnknownDistro}, Permanent},
		{"not a qcow2 image", fmt.Errorf("convert disk: %w", notQcow2), Permanent},
		{"malformed qcow2", truncatedQcow2, Permanent},
		{"unsupported qcow2 feature", &qcow2.FeatureError{Kind: qcow2.ErrBackingFile}, Permanent},
		{"more space than the file system holds", tooBig, Permanent},
		{"space that may be freed", &content.SpaceError{Need: 10, Available: 5, Total: 100}, Retry},
		{"content mismatch", &content.MismatchError{}, Permanent},
		{"invalid store name", badName, Permanent},
		{"kernel with nothing to unpack", plainKernel, Permanent},
		{"file larger than the file system allows", &os.PathError{Op: "truncate", Path: "x", Err: syscall.EFBIG}, Permanent},
		{"file system full", &os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}, Retry},
		{"connection reset", fmt.Errorf("publish: %w", syscall.ECONNRESET), Retry},
		{"missing file", os.ErrNotExist, Retry},
		{"a short body given up on for good", &download.Error{Op: "read body", Err: io.ErrUnexpectedEOF}, Permanent},
		{"the outermost that says wins", &download.Error{Op: "read body", Retryable: true, Err: &qcow2.MalformedError{What: "header", Reason: "x"}}, Retry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err == nil {
				t.Fatal("the domain call did not fail")
			}
			if got := Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
			// What the runner sees through the wrapped handler.
			h := classified(func(context.Context, stage.Message) ([]stage.Event, error) { return nil, tt.err })
			_, err := h(context.Background(), stage.Message{})
			if !errors.Is(err, tt.err) {
				t.Errorf("wrapped handler returned %v, which does not wrap %v", err, tt.err)
			}
			if stage.IsPermanent(err) != (tt.want != Retry) || stage.IsPoison(err) != (tt.want == Poison) {
				t.Errorf("runner sees permanent %v, poison %v; want %v", stage.IsPermanent(err), stage.IsPoison(err), tt.want)
			}
		})
	}
	if Classify(nil) != Retry {
		t.Error("Classify(nil) is not Retry")
	}
	events := []stage.Event{{Subject: "s"}}
	h := classified(func(context.Context, stage.Message) ([]stage.Event, error) { return events, nil })
	if got, err := h(context.Background(), stage.Message{}); err != nil || len(got) != 1 {
		t.Errorf("wrapped handler changed a success: %v, %v", got, err)
	}
}

// TestCollectorFailureNamesItsAsset: when the collector, handling the
// initramfs's event, cannot link the disk into the images view, the failure
// is the disk's, and says in words what is in the way.
func TestCollectorFailureNamesItsAsset(t *testing.T) {
	t.Parallel()
	spec := image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}
	tests := []struct {
		name     string
		obstacle func(t *testing.T, st *store.Store) // plants something in the view
		wantRole image.Role
		wantText string
	}{
		{"a directory where the disk's link goes", func(t *testing.T, st *store.Store) {
			dir, _ := st.ImageDir(spec)
			if err := os.MkdirAll(filepath.Join(dir, "disk.img", "inner"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, image.RoleDisk, "is a directory, not a link"},
		{"a symlink where the distro's directory goes", func(t *testing.T, st *store.Store) {
			if err := os.Symlink(t.TempDir(), filepath.Join(st.Root(), "images", "ubuntu")); err != nil {
				t.Fatal(err)
			}
		}, image.RoleKernel, "is a symbolic link, not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			st, err := store.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			state := requestState{Spec: spec, Format: image.FormatQCOW2, Roles: []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk}, Done: map[image.Role]messages.AssetEvent{}}
			for _, r := range state.Roles {
				b := []byte("content of the " + string(r))
				sum := sha256.Sum256(b)
				d := digest.Digest{Algorithm: digest.SHA256, Hex: hex.EncodeToString(sum[:])}
				ingest := st.IngestPath(d)
				if err := os.WriteFile(ingest, b, 0o644); err != nil {
					t.Fatal(err)
				}
				blob, err := st.Commit(ctx, ingest, d, int64(len(b)))
				if err != nil {
					t.Fatal(err)
				}
				state.Done[r] = messages.AssetEvent{RequestID: "r1", Spec: spec, Roles: state.Roles, Status: messages.StatusVerified,
					Asset: image.Asset{Role: r, Digest: d, Format: image.FormatQCOW2}, Blob: blob.SHA256, Path: blob.Path, FileFormat: image.FormatQCOW2}
			}
			tt.obstacle(t, st)
			c := &CollectorStage{Store: st, Medium: sharedCache{}, Logger: slog.New(slog.DiscardHandler)}
			_, err = c.decide(ctx, state, "r1")
			if err == nil {
				t.Fatal("decide linked the view through the obstacle")
			}
			// The runner's failure policy for the initramfs's done event.
			data, merr := messages.Encode(messages.TypeAsset, ptr(state.Done[image.RoleInitramfs]))
			if merr != nil {
				t.Fatal(merr)
			}
			evs := FailurePolicy(messages.StageCollector, "", slog.New(slog.DiscardHandler))(
				stage.Message{Subject: messages.DoneSubject(messages.StageVerifier), Data: data}, throughRunner(err))
			if len(evs) != 1 {
				t.Fatalf("failure policy gave %d events", len(evs))
			}
			var res messages.Result
			if err := messages.Decode(evs[0].Data, messages.TypeResult, &res); err != nil {
				t.Fatal(err)
			}
			f := res.Failure
			if f == nil || f.Asset != tt.wantRole {
				t.Fatalf("failure %+v, want it reported for the %s", f, tt.wantRole)
			}
			if !strings.Contains(f.Cause, tt.wantText) || strings.Contains(f.Cause, "---") {
				t.Errorf("cause %q does not say %q in words", f.Cause, tt.wantText)
			}
			if f.Retryable {
				t.Errorf("failure %+v is retryable: an obstacle in the view stays until removed", f)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// throughRunner is err as the runner gets it from a handler returning it.
func throughRunner(err error) error {
	_, err = classified(func(context.Context, stage.Message) ([]stage.Event, error) { return nil, err })(context.Background(), stage.Message{})
	return err
}

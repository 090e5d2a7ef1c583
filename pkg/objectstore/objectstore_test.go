package objectstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/internal/natsembed"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/objectstore"
)

func startServer(t testing.TB) (*natsembed.Server, jetstream.JetStream) {
	t.Helper()
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return srv, js
}

func openStore(t testing.TB, js jetstream.JetStream, opts ...objectstore.Option) *objectstore.Store {
	t.Helper()
	s, err := objectstore.Open(context.Background(), js, objectstore.Config{Bucket: "blobs"}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeFile writes n pseudo-random bytes and returns the path and its digests.
func writeFile(t testing.TB, n int) (string, digest.Digest, digest.Digest) {
	t.Helper()
	data := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 7))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	p := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	s256 := sha256.Sum256(data)
	s512 := sha512.Sum512(data)
	return p, digest.Digest{Algorithm: digest.SHA256, Hex: fmt.Sprintf("%x", s256)}, digest.Digest{Algorithm: digest.SHA512, Hex: fmt.Sprintf("%x", s512)}
}

func readAll(t *testing.T, s *objectstore.Store, info objectstore.Info) ([]byte, error) {
	t.Helper()
	r, err := s.Open(context.Background(), info)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	_, js := startServer(t)
	s := openStore(t, js, objectstore.WithChunkSize(64<<10), objectstore.WithWindow(4))
	for _, size := range []int{0, 1, 64 << 10, 64<<10 + 1, 3<<20 + 17} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			path, d256, d512 := writeFile(t, size)
			want, _ := os.ReadFile(path)
			for _, d := range []digest.Digest{d256, d512} {
				var last int64
				info, err := s.PutFile(context.Background(), d, path, func(n int64) { last = n })
				if err != nil {
					t.Fatal(err)
				}
				if info.Size != int64(size) || info.SHA256 != d256 || (size > 0 && last != int64(size)) {
					t.Fatalf("put %s: info %+v, progress %d", d.Algorithm, info, last)
				}
				st, err := s.Stat(context.Background(), d)
				if err != nil || st.NUID != info.NUID || st.Size != info.Size || st.SHA256 != d256 {
					t.Fatalf("stat: %+v %v, want %+v", st, err, info)
				}
				got, err := readAll(t, s, st)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("read back %d bytes (err %v), want %d", len(got), err, len(want))
				}
			}
		})
	}
}

// The bucket is an ordinary Object Store: the library reads what we write
// and we read what it writes.
func TestInteroperatesWithTheLibrary(t *testing.T) {
	t.Parallel()
	_, js := startServer(t)
	s := openStore(t, js)
	path, d, _ := writeFile(t, 1<<20+5)
	want, _ := os.ReadFile(path)
	if _, err := s.PutFile(context.Background(), d, path, nil); err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(context.Background(), "blobs")
	if err != nil {
		t.Fatal(err)
	}
	got, err := obs.GetBytes(context.Background(), objectstore.Name(d))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("library read: %d bytes, %v", len(got), err)
	}

	path2, d2, _ := writeFile(t, 300<<10)
	want2, _ := os.ReadFile(path2)
	if _, err := obs.PutBytes(context.Background(), objectstore.Name(d2), want2); err != nil {
		t.Fatal(err)
	}
	info, err := s.Stat(context.Background(), d2)
	if err != nil {
		t.Fatal(err)
	}
	got2, err := readAll(t, s, info)
	if err != nil || !bytes.Equal(got2, want2) {
		t.Fatalf("our read of a library object: %d bytes, %v", len(got2), err)
	}
}

func TestPutRefusesBytesThatDoNotMatch(t *testing.T) {
	t.Parallel()
	_, js := startServer(t)
	s := openStore(t, js)
	path, _, _ := writeFile(t, 200<<10)
	_, other, _ := writeFile(t, 10)
	_, err := s.PutFile(context.Background(), other, path, nil)
	if !errors.Is(err, objectstore.ErrDigestMismatch) {
		t.Fatalf("put of mismatching bytes: %v", err)
	}
	if _, err := s.Stat(context.Background(), other); !errors.Is(err, objectstore.ErrNotFound) {
		t.Fatalf("a mismatching put left an object: %v", err)
	}
	// Its chunks were purged too.
	si, err := js.Stream(context.Background(), "OBJ_blobs")
	if err != nil {
		t.Fatal(err)
	}
	if n := si.CachedInfo().State.Msgs; n != 0 {
		t.Fatalf("%d messages left in the bucket", n)
	}
}

func TestDeleteOnlyTheVersionNamed(t *testing.T) {
	t.Parallel()
	_, js := startServer(t)
	s := openStore(t, js)
	path, d, _ := writeFile(t, 100<<10)
	first, err := s.PutFile(context.Background(), d, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.PutFile(context.Background(), d, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(context.Background(), d, first.NUID); err != nil {
		t.Fatal(err)
	}
	if cur, err := s.Stat(context.Background(), d); err != nil || cur.NUID != second.NUID {
		t.Fatalf("deleting the old version removed the new one: %+v %v", cur, err)
	}
	// The replaced version's chunks are gone: reading it fails, not hangs.
	if _, err := readAll(t, s, first); err == nil {
		t.Fatal("reading a replaced version succeeded")
	}
	if err := s.Delete(context.Background(), d, second.NUID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(context.Background(), d); !errors.Is(err, objectstore.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.Delete(context.Background(), d, second.NUID); err != nil {
		t.Fatalf("deleting twice: %v", err)
	}
}

// Bytes changed under the recorded digest (a damaged chunk) are reported at
// the end of the read.
func TestReadDetectsDamagedChunks(t *testing.T) {
	t.Parallel()
	_, js := startServer(t)
	s := openStore(t, js, objectstore.WithChunkSize(32<<10))
	path, d, _ := writeFile(t, 100<<10)
	info, err := s.PutFile(context.Background(), d, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(context.Background(), "OBJ_blobs")
	if err != nil {
		t.Fatal(err)
	}
	// Replace the chunks with same-sized garbage under the same NUID.
	subj := "$O.blobs.C." + info.NUID
	if err := stream.Purge(context.Background(), jetstream.WithPurgeSubject(subj)); err != nil {
		t.Fatal(err)
	}
	garbage := bytes.Repeat([]byte{0xAB}, int(info.Size))
	for off := 0; off < len(garbage); off += 32 << 10 {
		end := min(off+32<<10, len(garbage))
		if _, err := js.Publish(context.Background(), subj, garbage[off:end]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := readAll(t, s, info); !errors.Is(err, objectstore.ErrDigestMismatch) {
		t.Fatalf("read of damaged chunks: %v", err)
	}
}

// A put interrupted by the server going away is retried and completes.
func TestPutRidesThroughAServerRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv, err := natsembed.Start(natsembed.Options{StoreDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	url := srv.ClientURL()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	s := openStore(t, js, objectstore.WithChunkSize(16<<10), objectstore.WithWindow(2), objectstore.WithStallTimeout(time.Second))
	path, d, _ := writeFile(t, 8<<20)
	want, _ := os.ReadFile(path)
	// The restart reports here: a failure in its goroutine may not end the
	// test there (t.Fatal) nor panic, and the put would wait for ever.
	restarted := make(chan error, 1)
	var once bool
	done := make(chan error, 1)
	go func() {
		_, err := s.PutFile(context.Background(), d, path, func(n int64) {
			if !once && n > 1<<20 {
				once = true
				go func() {
					srv.Shutdown()
					time.Sleep(200 * time.Millisecond)
					srv2, err := natsembed.Start(natsembed.Options{StoreDir: dir, Listen: url[len("nats://"):]})
					if err == nil {
						t.Cleanup(srv2.Shutdown)
					}
					restarted <- err
				}()
			}
		})
		done <- err
	}()
	timeout := time.After(2 * time.Minute)
	for _, step := range []struct {
		what  string
		ended <-chan error
	}{{"restart the server", restarted}, {"put across a restart", done}} {
		select {
		case err := <-step.ended:
			if err != nil {
				t.Fatalf("%s: %v", step.what, err)
			}
		case <-timeout:
			t.Fatalf("%s: not done after 2 minutes", step.what)
		}
	}
	info, err := s.Stat(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	si, _ := js.Stream(context.Background(), "OBJ_blobs")
	t.Logf("info %+v stream %+v", info, si.CachedInfo().State)
	got, err := readAll(t, openStore(t, js), info)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back after restart: %d bytes, %v", len(got), err)
	}
}

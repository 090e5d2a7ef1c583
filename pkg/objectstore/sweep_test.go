package objectstore_test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/vmprep/vmprep/pkg/objectstore"
)

// chunkCounts is how many chunk messages each object version holds.
func chunkCounts(t *testing.T, js jetstream.JetStream) map[string]uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), objectstore.StreamName("blobs"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter("$O.blobs.C.>"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for subj, n := range info.State.Subjects {
		out[subj[len("$O.blobs.C."):]] = n
	}
	return out
}

// TestSweepCollectsOrphanedChunks: the chunks of a put interrupted before
// its meta message (written here as a killed put leaves them) are deleted
// once older than the grace period; a put still writing chunks, and a stored
// object, are left alone.
func TestSweepCollectsOrphanedChunks(t *testing.T) {
	t.Parallel()
	_, js := startServer(t)
	ctx := context.Background()
	s := openStore(t, js, objectstore.WithChunkSize(4<<10), objectstore.WithStallTimeout(time.Second))
	path, d, _ := writeFile(t, 50<<10)
	stored, err := s.PutFile(ctx, d, path, nil)
	if err != nil {
		t.Fatal(err)
	}

	interrupted := nuid.Next()
	for range 3 {
		if _, err := js.Publish(ctx, "$O.blobs.C."+interrupted, bytes.Repeat([]byte{1}, 4<<10)); err != nil {
			t.Fatal(err)
		}
	}
	// A put in progress: a chunk every 100ms, for as long as the test runs.
	inProgress := nuid.Next()
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for pctx.Err() == nil {
			_, _ = js.Publish(pctx, "$O.blobs.C."+inProgress, []byte("chunk"))
			time.Sleep(100 * time.Millisecond)
		}
	}()
	defer func() { stop(); wg.Wait() }()

	grace := 2 * time.Second
	if _, err := s.Sweep(ctx, grace/4); err == nil {
		t.Error("a sweep with a grace under the stall timeout was not refused")
	}
	// Young orphans are left: they cannot be told from a put in progress.
	if swept, err := s.Sweep(ctx, grace); err != nil || len(swept) != 0 {
		t.Fatalf("sweep before the grace period: swept %v, %v", swept, err)
	}
	time.Sleep(grace + 500*time.Millisecond)
	swept, err := s.Sweep(ctx, grace)
	if err != nil {
		t.Fatal(err)
	}
	if len(swept) != 1 || swept[0].NUID != interrupted || swept[0].Chunks != 3 {
		t.Errorf("swept %+v, want the interrupted put's 3 chunks (%s) only", swept, interrupted)
	}
	counts := chunkCounts(t, js)
	if n := counts[interrupted]; n != 0 {
		t.Errorf("the interrupted put still has %d chunks", n)
	}
	if counts[inProgress] == 0 {
		t.Error("the put in progress lost its chunks")
	}
	if counts[stored.NUID] != uint64(stored.Chunks) {
		t.Errorf("the stored object has %d chunks, want %d", counts[stored.NUID], stored.Chunks)
	}
	if data, err := readAll(t, s, stored); err != nil || len(data) != int(stored.Size) {
		t.Errorf("the stored object no longer reads back: %d bytes, %v", len(data), err)
	}
}

// TestDeleteRemovesEveryChunk: deleting an object removes its meta and
// every chunk of that version (message by message, no purge), and nothing
// of another object.
func TestDeleteRemovesEveryChunk(t *testing.T) {
	t.Parallel()
	_, js := startServer(t)
	ctx := context.Background()
	s := openStore(t, js, objectstore.WithChunkSize(4<<10))
	pa, da, _ := writeFile(t, 40<<10)
	pb, db, _ := writeFile(t, 30<<10)
	a, err := s.PutFile(ctx, da, pa, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.PutFile(ctx, db, pb, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, da, a.NUID); err != nil {
		t.Fatal(err)
	}
	counts := chunkCounts(t, js)
	if counts[a.NUID] != 0 || counts[b.NUID] != uint64(b.Chunks) {
		t.Errorf("after deleting a: a has %d chunks (want 0), b has %d (want %d)", counts[a.NUID], counts[b.NUID], b.Chunks)
	}
	if _, err := s.Stat(ctx, da); err == nil {
		t.Error("the deleted object is still there")
	}
}

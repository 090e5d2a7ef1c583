package follow

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testutil"
)

// appender writes data to path in chunks, waiting after each until the
// follower has read it (the pause a slow download makes), so that the
// follower really sees a growing file.
func appender(t *testing.T, path string, data []byte, chunk int, fl *File) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		for off := 0; off < len(data); off += chunk {
			end := min(off+chunk, len(data))
			if _, err := f.Write(data[off:end]); err != nil {
				done <- err
				return
			}
			if err := waitWatermark(fl, int64(end)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

// waitWatermark waits until the follower has read n bytes or ended.
func waitWatermark(fl *File, n int64) error {
	for {
		fl.mu.Lock()
		wm, advanced := fl.watermark, fl.advanced
		fl.mu.Unlock()
		if wm >= n {
			return nil
		}
		select {
		case <-advanced:
		case <-fl.Done():
			return nil
		case <-time.After(time.Minute):
			return errors.New("follower did not advance for a minute")
		}
	}
}

func start(t *testing.T, path string, data []byte, size int64, opts Options) *File {
	t.Helper()
	fl, err := Start(context.Background(), path, testutil.SHA256Of(data), size, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fl.Close() })
	return fl
}

func TestFollowGrowingFile(t *testing.T) {
	data := testutil.Fill("follow", 5<<20+123)
	for _, tt := range []struct {
		name  string
		size  int64 // expected size given to Start; 0: unknown
		chunk int
	}{
		{"size known, 64 KiB chunks", int64(len(data)), 64 << 10},
		{"size unknown, 1 MiB chunks", 0, 1 << 20},
		{"size known, odd chunks", int64(len(data)), 77777},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ingest")
			fl := start(t, path, data, tt.size, Options{ReadBytes: 100000})
			wrote := appender(t, path, data, tt.chunk, fl)
			// A read of the last bytes, issued before they exist, waits for them.
			tail := make([]byte, 1000)
			n, err := fl.ReaderAt(context.Background()).ReadAt(tail, int64(len(data))-1000)
			if err != nil || n != 1000 || !bytes.Equal(tail, data[len(data)-1000:]) {
				t.Fatalf("ReadAt of the tail: %d bytes, %v", n, err)
			}
			if err := fl.Wait(context.Background()); err != nil {
				t.Fatalf("Wait: %v", err)
			}
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			if wm := fl.Watermark(); wm != int64(len(data)) {
				t.Errorf("watermark %d, want %d", wm, len(data))
			}
			// Past the end of a verified file: what is there, then EOF.
			buf := make([]byte, 10)
			if n, err := fl.ReaderAt(context.Background()).ReadAt(buf, int64(len(data))-4); n != 4 || !errors.Is(err, io.EOF) {
				t.Errorf("read across the end: %d, %v; want 4, EOF", n, err)
			}
		})
	}
}

func TestFollowFailures(t *testing.T) {
	data := testutil.Fill("follow-fail", 3<<20)
	other := testutil.Fill("other", 3<<20)
	for _, tt := range []struct {
		name  string
		size  int64
		write func(t *testing.T, path string, fl *File) // what the "download" does
		idle  time.Duration
		want  error
		// readAt: where a reader waits (default the last byte of data).
		readAt int64
	}{
		{
			name: "truncated mid-way", size: int64(len(data)),
			write: func(t *testing.T, path string, fl *File) {
				if err := <-appender(t, path, data[:1<<20], 256<<10, fl); err != nil {
					t.Error(err)
				}
				if err := os.Truncate(path, 0); err != nil {
					t.Error(err)
				}
			},
			want: ErrTruncated,
		},
		{
			name: "wrong content, size known", size: int64(len(other)),
			write: func(t *testing.T, path string, fl *File) {
				if err := <-appender(t, path, other, 1<<20, fl); err != nil {
					t.Error(err)
				}
			},
			want: ErrDigestMismatch,
		},
		{
			name: "more than the expected size", size: 1 << 20,
			write: func(t *testing.T, path string, fl *File) {
				_ = os.WriteFile(path, other, 0o644)
			},
			want: ErrDigestMismatch,
		},
		{
			name: "wrong content, size unknown: stalls", size: 0, idle: 50 * time.Millisecond, readAt: int64(len(other)) + 10,
			write: func(t *testing.T, path string, fl *File) {
				if err := <-appender(t, path, other, 1<<20, fl); err != nil {
					t.Error(err)
				}
			},
			want: ErrStalled,
		},
		{
			name: "never appears", size: int64(len(data)), idle: 50 * time.Millisecond,
			write: func(t *testing.T, path string, fl *File) {},
			want:  ErrStalled,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ingest")
			fl := start(t, path, data, tt.size, Options{Idle: tt.idle, ReadBytes: 64 << 10})
			// A reader waiting for the end gets the follow's error.
			readErr := make(chan error, 1)
			at := int64(len(data)) - 1
			if tt.readAt > 0 {
				at = tt.readAt
			}
			go func() {
				_, err := fl.ReaderAt(context.Background()).ReadAt(make([]byte, 2), at) // across the end: waits for the verdict
				readErr <- err
			}()
			tt.write(t, path, fl)
			err := fl.Wait(context.Background())
			if !errors.Is(err, tt.want) {
				t.Fatalf("Wait: %v, want %v", err, tt.want)
			}
			if err := <-readErr; !errors.Is(err, tt.want) {
				t.Errorf("waiting ReadAt: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestFollowFailAndCancel(t *testing.T) {
	data := testutil.Fill("follow-cancel", 1<<20)
	path := filepath.Join(t.TempDir(), "ingest")
	if err := os.WriteFile(path, data[:1000], 0o644); err != nil {
		t.Fatal(err)
	}
	fl := start(t, path, data, int64(len(data)), Options{})
	// A reader's own context ends its wait; the follow goes on.
	ctx, cancel := context.WithCancel(context.Background())
	readErr := make(chan error, 1)
	go func() {
		_, err := fl.ReaderAt(ctx).ReadAt(make([]byte, 10), 5000)
		readErr <- err
	}()
	cancel()
	if err := <-readErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadAt after cancel: %v", err)
	}
	if isClosed(fl.Done()) {
		t.Fatal("the follow ended with a reader's context")
	}
	// Bytes already read are served at once.
	if n, err := fl.ReaderAt(context.Background()).ReadAt(make([]byte, 10), 0); n != 10 || err != nil {
		t.Fatalf("ReadAt of bytes present: %d, %v", n, err)
	}
	downloadFailed := errors.New("download failed: 404")
	fl.Fail(downloadFailed)
	if err := fl.Wait(context.Background()); !errors.Is(err, downloadFailed) {
		t.Fatalf("Wait after Fail: %v", err)
	}
	if _, err := fl.ReaderAt(context.Background()).ReadAt(make([]byte, 10), 0); !errors.Is(err, downloadFailed) {
		t.Fatalf("ReadAt after Fail: %v", err)
	}
}

// TestFollowGone: a file that never appears because its blob was committed
// meanwhile ends the follow at the first poll, not after the idle timeout.
func TestFollowGone(t *testing.T) {
	gone := errors.New("committed meanwhile")
	fl := start(t, filepath.Join(t.TempDir(), "ingest"), []byte("x"), 1, Options{Idle: time.Hour, Gone: func() error { return gone }})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := fl.Wait(ctx); !errors.Is(err, gone) {
		t.Fatalf("Wait: %v, want %v", err, gone)
	}
}

// TestFollowVouched: with Vouch the follow reads nothing for hashing: it
// ends verified on the writer's word once the file is complete, whatever
// its bytes, and fails as a hashing follow does on a shrink or an overrun,
// or stalls when the word never comes.
func TestFollowVouched(t *testing.T) {
	data := testutil.Fill("vouched", 3<<20)
	other := testutil.Fill("other", 3<<20)
	for _, tt := range []struct {
		name  string
		size  int64
		write func(t *testing.T, path string, fl *File)
		vouch bool
		want  error // nil: verified
	}{
		{
			name: "vouched, other bytes", size: int64(len(other)), vouch: true, // the word, not a hash
			write: func(t *testing.T, path string, fl *File) {
				if err := <-appender(t, path, other, 1<<20, fl); err != nil {
					t.Error(err)
				}
			},
		},
		{
			name: "not vouched: stalls", size: int64(len(data)),
			write: func(t *testing.T, path string, fl *File) {
				if err := <-appender(t, path, data, 1<<20, fl); err != nil {
					t.Error(err)
				}
			},
			want: ErrStalled,
		},
		{
			name: "truncated mid-way", size: int64(len(data)), vouch: true,
			write: func(t *testing.T, path string, fl *File) {
				if err := <-appender(t, path, data[:1<<20], 256<<10, fl); err != nil {
					t.Error(err)
				}
				if err := os.Truncate(path, 0); err != nil {
					t.Error(err)
				}
			},
			want: ErrTruncated,
		},
		{
			name: "more than the expected size", size: 1 << 20, vouch: true,
			write: func(t *testing.T, path string, fl *File) {
				_ = os.WriteFile(path, other, 0o644)
			},
			want: ErrDigestMismatch,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ingest")
			fl := start(t, path, data, tt.size, Options{Idle: 100 * time.Millisecond, Vouch: func(os.FileInfo) (bool, error) { return tt.vouch, nil }})
			tt.write(t, path, fl)
			err := fl.Wait(context.Background())
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("Wait: %v, want %v", err, tt.want)
			}
			if tt.want == nil {
				got, err := io.ReadAll(io.NewSectionReader(fl.ReaderAt(context.Background()), 0, tt.size))
				if err != nil || !bytes.Equal(got, other) {
					t.Errorf("ReadAt after the word: %d bytes, %v", len(got), err)
				}
			}
		})
	}
	if _, err := Start(context.Background(), filepath.Join(t.TempDir(), "x"), testutil.SHA256Of(data), 0, Options{Vouch: func(os.FileInfo) (bool, error) { return true, nil }}); err == nil {
		t.Error("Start with Vouch and no size: no error")
	}
}

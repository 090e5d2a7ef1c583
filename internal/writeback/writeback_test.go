package writeback

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func tempFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// counting returns a Writeback whose requests are counted and signalled on
// the returned channel, after going to the real Range.
func counting(t *testing.T, f *os.File, every int64) (*Writeback, *atomic.Int64, chan struct{}) {
	t.Helper()
	w := Start(f, every)
	var n atomic.Int64
	signal := make(chan struct{}, 100)
	w.flush = func(f *os.File) error {
		n.Add(1)
		signal <- struct{}{}
		return Range(f, 0, 0)
	}
	t.Cleanup(w.Close)
	return w, &n, signal
}

func waitKick(t *testing.T, signal chan struct{}) {
	t.Helper()
	select {
	case <-signal:
	case <-time.After(30 * time.Second):
		t.Fatal("no writeback was requested")
	}
}

func TestWroteKicksEveryThreshold(t *testing.T) {
	f := tempFile(t)
	w, n, signal := counting(t, f, 1000)
	buf := make([]byte, 999)
	if _, err := f.Write(buf); err != nil {
		t.Fatal(err)
	}
	w.Wrote(999)
	if _, err := f.Write(buf[:1]); err != nil {
		t.Fatal(err)
	}
	w.Wrote(1)
	waitKick(t, signal)
	w.Close()
	if got := n.Load(); got != 1 {
		t.Errorf("%d writeback requests for 1000 bytes at every=1000, want 1", got)
	}
}

func TestBelowThresholdNeverKicks(t *testing.T) {
	for _, every := range []int64{0, -1, 1 << 20} {
		f := tempFile(t)
		w, n, _ := counting(t, f, every)
		for range 100 {
			w.Wrote(100)
		}
		w.Close()
		if got := n.Load(); got != 0 {
			t.Errorf("every=%d: %d writeback requests for 10000 bytes, want 0", every, got)
		}
	}
}

// TestConcurrentWriters: the converter's workers report from many goroutines;
// the count must neither race nor lose a threshold entirely.
func TestConcurrentWriters(t *testing.T) {
	f := tempFile(t)
	w, n, signal := counting(t, f, 1<<10)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 64 {
				w.Wrote(64)
			}
		}()
	}
	wg.Wait() // 8*64*64 = 32 KiB: 32 thresholds
	waitKick(t, signal)
	w.Close()
	if got := n.Load(); got < 1 || got > 32 {
		t.Errorf("%d writeback requests for 32 thresholds, want 1..32", got)
	}
}

func TestWroteAfterCloseIsHarmless(t *testing.T) {
	f := tempFile(t)
	w := Start(f, 1)
	w.Close()
	w.Close()
	for range 10 {
		w.Wrote(10) // must neither panic nor block
	}
}

func TestRange(t *testing.T) {
	f := tempFile(t)
	if _, err := f.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := Range(f, 0, 0); err != nil {
		t.Errorf("Range(whole file) = %v", err)
	}
	if err := Range(f, 4096, 8192); err != nil {
		t.Errorf("Range(4096, 8192) = %v", err)
	}
	if runtime.GOOS == "linux" {
		// The kernel rejects a negative offset: this passes only if the
		// 64-bit offset reaches it whole (a raw syscall on 386 would split
		// it wrongly and the call would do nothing, successfully).
		if err := Range(f, -4096, 4096); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("Range(negative offset) = %v, want EINVAL", err)
		}
	}
	f.Close()
	if err := Range(f, 0, 0); runtime.GOOS == "linux" && err == nil {
		t.Error("Range(closed file) succeeded")
	}
}

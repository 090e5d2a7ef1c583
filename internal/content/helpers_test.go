package content

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/digest"
)

// Child-process modes: the test binary re-executes itself with
// STORE_TEST_HELPER set to play a second process sharing the store.
const (
	envHelper = "STORE_TEST_HELPER"
	envRoot   = "STORE_TEST_ROOT"
	envDigest = "STORE_TEST_DIGEST"
	envSource = "STORE_TEST_SOURCE" // file or URL with the content
	envN      = "STORE_TEST_N"
	envName   = "STORE_TEST_NAME"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envHelper); mode != "" {
		if err := helperMain(mode); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func helperMain(mode string) error {
	ctx := context.Background()
	s, err := Open(os.Getenv(envRoot))
	if err != nil {
		return err
	}
	switch mode {
	case "commit", "fetch":
		d, err := digest.Parse(os.Getenv(envDigest))
		if err != nil {
			return err
		}
		n, _ := strconv.Atoi(os.Getenv(envN))
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if mode == "commit" {
					errs <- commitCopy(ctx, s, d, os.Getenv(envSource), fmt.Sprintf("p%d-%d", os.Getpid(), i))
				} else {
					_, err := fetchOnce(ctx, s, d, os.Getenv(envSource))
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	case "crashcommit":
		// Commit the content at envSource as envDigest, dying by SIGKILL at
		// step envName (see Store.crashPoint).
		s.crashPoint = killAt(os.Getenv(envName))
		return commitCopy(ctx, s, mustParse(os.Getenv(envDigest)), os.Getenv(envSource), "")
	case "crashderive":
		s.crashPoint = killAt(os.Getenv(envName))
		src := mustParse(os.Getenv(envDigest))
		_, err := s.PutDerived(ctx, DerivedKey{Source: src, Converter: "c-1", Format: "raw"}, func(ctx context.Context, dst string) error {
			return WriteAtomic(dst, 0o644, func(f *os.File) error {
				_, err := f.Write(testutil.Fill("derived", 10000))
				s.step("derive:mid-produce")
				return err
			})
		})
		return err
	case "slowderive":
		// Produce derived output for envDigest, announcing "producing" with
		// the temporary file written, and finishing once stdin closes. The
		// rename fails if anyone removed the temporary file meanwhile.
		src := mustParse(os.Getenv(envDigest))
		_, err := s.PutDerived(ctx, DerivedKey{Source: src, Converter: "c-1", Format: "raw"}, func(ctx context.Context, dst string) error {
			return WriteAtomic(dst, 0o644, func(f *os.File) error {
				if _, err := f.Write(testutil.Fill("derived", 10000)); err != nil {
					return err
				}
				fmt.Println("producing")
				_, _ = io.Copy(io.Discard, os.Stdin)
				return nil
			})
		})
		return err
	case "holdlock":
		unlock, err := s.Lock(ctx, os.Getenv(envName))
		if err != nil {
			return err
		}
		fmt.Println("locked")
		_, _ = io.Copy(io.Discard, os.Stdin) // hold until the parent closes stdin
		return unlock()
	}
	return fmt.Errorf("unknown mode %q", mode)
}

func killAt(step string) func(string) {
	return func(at string) {
		if at == step {
			if p, err := os.FindProcess(os.Getpid()); err == nil {
				_ = p.Kill() // SIGKILL: no deferred cleanup runs
			}
			select {} // the signal is delivered asynchronously
		}
	}
}

func mustParse(s string) digest.Digest {
	d, err := digest.Parse(s)
	if err != nil {
		panic(err)
	}
	return d
}

// commitCopy copies src into its own ingest file (suffix tag) and commits it,
// without any caller-side lock: Commit alone must cope with racing committers.
func commitCopy(ctx context.Context, s *Store, d digest.Digest, src, tag string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	p := s.IngestPath(d)
	if tag != "" {
		p += "." + tag
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return err
	}
	_, err = s.Commit(ctx, p, d, int64(len(b)))
	return err
}

// fetchOnce follows the documented download protocol: look up, lock the
// digest, look up again, download into IngestPath, commit. It reports
// whether it downloaded.
func fetchOnce(ctx context.Context, s *Store, d digest.Digest, url string) (bool, error) {
	if _, err := s.Lookup(ctx, d); err == nil {
		return false, nil
	}
	unlock, err := s.Lock(ctx, d.String())
	if err != nil {
		return false, err
	}
	defer unlock()
	if _, err := s.Lookup(ctx, d); err == nil {
		return false, nil
	} else if !errors.Is(err, ErrNotFound) {
		return false, err
	}
	resp, err := http.Get(url)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	p := s.IngestPath(d)
	f, err := os.Create(p)
	if err != nil {
		return false, err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Close(); err != nil {
		return false, err
	}
	_, err = s.Commit(ctx, p, d, 0)
	return true, err
}

// startHelper runs this test binary as a second process.
func startHelper(t *testing.T, mode string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{envHelper + "=" + mode}, env...)...)
	cmd.Stderr = os.Stderr
	return cmd
}

// holdLockInChild starts a process holding lock name; closing the returned
// writer makes it release and exit.
func holdLockInChild(t *testing.T, root, name string) (release func() error) {
	t.Helper()
	cmd := startHelper(t, "holdlock", envRoot+"="+root, envName+"="+name)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("child did not take the lock: %q %v", line, err)
	}
	done := false
	release = func() error {
		if done {
			return nil
		}
		done = true
		stdin.Close()
		return cmd.Wait()
	}
	t.Cleanup(func() { _ = release() })
	return release
}

func newStore(t *testing.T, opts ...Option) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "store"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ingest writes b as the ingest file for d.
func ingest(t *testing.T, s *Store, d digest.Digest, b []byte) string {
	t.Helper()
	p := s.IngestPath(d)
	if p == "" {
		t.Fatalf("no ingest path for %v", d)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p+".meta", []byte(`{"url":"http://x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func commit(t *testing.T, s *Store, b []byte) BlobInfo {
	t.Helper()
	d := testutil.SHA256Of(b)
	info, err := s.Commit(context.Background(), ingest(t, s, d, b), d, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// overwriteByte flips one byte in place, as a bit-rot or a stray writer would.
func overwriteByte(t *testing.T, path string, off int64) {
	t.Helper()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// noRefs is a layer above that keeps nothing: GC and List of the content
// store alone.
type noRefs struct{}

func (noRefs) References(context.Context, *Inventory) error { return nil }

package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds the five commands once per test binary run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vmprep-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binDir = dir
		cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "github.com/vmprep/vmprep/cmd/...")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// proc is one running OS process with its output kept for failure reports.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type cluster struct {
	t      *testing.T
	bin    string
	cache  string
	nats   string
	mirror *testmirror.Mirror
	mu     sync.Mutex
	procs  []*proc
}

func (c *cluster) start(name string, args ...string) *proc {
	c.t.Helper()
	exe := name
	if i := strings.IndexByte(name, '#'); i >= 0 {
		exe = name[:i]
	}
	cmd := exec.Command(filepath.Join(c.bin, exe), args...)
	buf := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.Env = append(os.Environ(), "VMPREP_LOG_FORMAT=text", "VMPREP_LOG_LEVEL=info")
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, out: buf, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

func (c *cluster) stage(name string, extra ...string) *proc {
	exe := name
	if i := strings.IndexByte(name, '#'); i >= 0 {
		exe = name[:i]
	}
	args := []string{"--nats", c.nats, "--cache-dir", c.cache, "--ack-wait", "3s", "--concurrency", "1", "--drain-timeout", "2s"}
	if exe == "resolver" {
		args = append(args, "--mirror", c.mirror.URL, "--keyring", c.mirror.KeyringFile())
	}
	return c.start(name, append(args, extra...)...)
}

func (p *proc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %s: %v", p.name, err)
	}
	<-p.done
}

func (c *cluster) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range c.procs {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if c.t.Failed() {
		for _, p := range c.procs {
			c.t.Logf("---- output of %s\n%s", p.name, p.out.String())
		}
	}
}

func newCluster(t *testing.T, m *testmirror.Mirror) *cluster {
	t.Helper()
	c := &cluster{t: t, bin: binaries(t), cache: t.TempDir(), mirror: m}
	t.Cleanup(c.stopAll)
	// The NATS server is its own process with no stages.
	cmd := exec.Command(filepath.Join(c.bin, "vmprep"), "serve", "--listen", "127.0.0.1:0", "--stages", "none", "--jetstream-dir", t.TempDir(), "--cache-dir", c.cache)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	buf := &lockedBuffer{}
	cmd.Stderr = buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: "vmprep-serve", cmd: cmd, out: buf, done: make(chan struct{})}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "nats: ") {
		t.Fatalf("vmprep serve did not print its URL (%q, %v): %s", line, err, buf.String())
	}
	go func() { _, _ = io.Copy(buf, stdout); _ = cmd.Wait(); close(p.done) }()
	c.procs = append(c.procs, p)
	c.nats = strings.TrimSpace(strings.TrimPrefix(line, "nats: "))
	return c
}

// openFiles lists the paths a process has open (Linux /proc).
func openFiles(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			out = append(out, target)
		}
	}
	return out
}

func holding(p *proc, prefix string) bool {
	for _, f := range openFiles(p.cmd.Process.Pid) {
		if strings.HasPrefix(f, prefix) {
			return true
		}
	}
	return false
}

// waitFor polls cond every few milliseconds until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func qemuRaw(t *testing.T, src string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "want.raw")
	if b, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, b)
	}
	return sha256File(t, out)
}

type prepareRun struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	errb bytes.Buffer
	done chan error
}

func (c *cluster) prepare(arch catalog.Arch, format catalog.DiskFormat) *prepareRun {
	r := &prepareRun{done: make(chan error, 1)}
	r.cmd = exec.Command(filepath.Join(c.bin, "vmprep"), "prepare", "--nats", c.nats, "--json", "--arch", string(arch), "--format", string(format), "ubuntu", "24.04")
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.errb
	if err := r.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	return r
}

func (r *prepareRun) result(t *testing.T, timeout time.Duration) messages.Result {
	t.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("vmprep prepare: %v\nstderr: %s\nstdout: %s", err, r.errb.String(), r.out.String())
		}
	case <-time.After(timeout):
		_ = r.cmd.Process.Kill()
		t.Fatalf("vmprep prepare did not finish within %s; stderr: %s", timeout, r.errb.String())
	}
	var res messages.Result
	if err := json.Unmarshal(r.out.Bytes(), &res); err != nil {
		t.Fatalf("prepare output is not a result: %v\n%s", err, r.out.String())
	}
	return res
}

func TestKilledWorkersResume(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatalf("qemu-img is needed (apt-get install qemu-utils): %v", err)
	}
	t0 := time.Now()
	step := func(what string) { t.Logf("%6.1fs %s", time.Since(t0).Seconds(), what) }
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64),
		testmirror.WithDiskSize(512<<20, 192<<20), testmirror.WithCompressedDisk(true))
	step("mirror built")
	c := newCluster(t, m)
	step("binaries built, server up")
	c.stage("resolver")
	fetchers := []*proc{c.stage("fetcher#1"), c.stage("fetcher#2")}
	c.stage("verifier")
	// No converter yet: the disk waits in the stream until we are watching.

	diskRel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	diskSize := int64(len(m.Content(diskRel)))
	m.Throttle(diskSize / 4) // about four seconds for the disk
	run := c.prepare(catalog.ArchAMD64, catalog.FormatRaw)

	// Kill -9 whichever fetcher is writing the disk once a good part has arrived.
	ingest := filepath.Join(c.cache, "ingest") + string(os.PathSeparator)
	var victim *proc
	waitFor(t, "a fetcher writing the disk", time.Minute, func() bool {
		if m.BytesServed(diskRel) < diskSize/4 {
			return false
		}
		for _, f := range fetchers {
			if holding(f, ingest) {
				victim = f
				return true
			}
		}
		return false
	})
	victim.kill9(t)
	step("fetcher killed")
	served := m.BytesServed(diskRel)
	if served >= diskSize {
		t.Fatalf("disk fully served (%d of %d bytes) before the kill; throttle too weak", served, diskSize)
	}
	fetchers = append(fetchers, c.stage("fetcher#3"))
	m.Throttle(diskSize) // faster now

	// Now the converters: kill -9 the first one mid-conversion.
	derived := filepath.Join(c.cache, "derived") + string(os.PathSeparator)
	conv1 := c.stage("converter#1")
	waitFor(t, "the converter writing the raw disk", 2*time.Minute, func() bool { return holding(conv1, derived) })
	conv1.kill9(t)
	step("converter killed")
	c.stage("converter#2")
	c.stage("converter#3")

	res := run.result(t, 3*time.Minute)
	step("amd64 prepared")
	if res.Status != messages.ResultPrepared {
		t.Fatalf("status %s: %+v", res.Status, res.Failure)
	}
	// The download resumed instead of restarting: well under two full copies served.
	if total := m.BytesServed(diskRel); total > diskSize+diskSize/2 {
		t.Errorf("disk bytes served %d for a %d-byte file: the download restarted instead of resuming", total, diskSize)
	}
	if got, want := sha256File(t, res.Disk), qemuRaw(t, filepath.Join(m.Dir, filepath.FromSlash(diskRel))); got != want {
		t.Errorf("raw disk sha256 %s, want qemu-img's %s", got, want)
	}
	if got := sha256File(t, res.Kernel); got != m.Digest(m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleKernel)).Hex {
		t.Errorf("kernel digest mismatch")
	}
	// No half-written file at a final path: every blob matches its name.
	blobs, _ := filepath.Glob(filepath.Join(c.cache, "blobs", "sha256", "*"))
	for _, b := range blobs {
		if got := sha256File(t, b); got != filepath.Base(b) {
			t.Errorf("blob %s holds content %s", b, got)
		}
	}

	// The fetchers shared the work (each asset is one message; concurrency is 1):
	// the victim was downloading the disk, and some other fetcher finished assets.
	worked := 1
	for _, f := range fetchers {
		if f != victim && strings.Contains(f.out.String(), "fetched") {
			worked++
		}
	}
	if worked < 2 {
		t.Errorf("only %d fetcher processes fetched anything; the work was not shared", worked)
	}

	// Warm, across processes: the same image again (raw and qcow2) needs no content.
	before := m.TotalContentRequests()
	for _, format := range []catalog.DiskFormat{catalog.FormatRaw, catalog.FormatQCOW2} {
		res := c.prepare(catalog.ArchAMD64, format).result(t, time.Minute)
		if res.Status != messages.ResultPrepared {
			t.Fatalf("warm %s: %+v", format, res.Failure)
		}
	}
	step("warm requests prepared")
	if after := m.TotalContentRequests(); after != before {
		t.Errorf("warm requests made %d content requests", after-before)
	}
}

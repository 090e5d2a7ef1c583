// Package cluster runs vmprep's binaries as separate OS processes for the
// multi-process tests and benchmarks: a NATS server (vmprep serve --stages
// none), stage processes, and vmprep prepare as a client.
package cluster

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Build compiles every command, and nats-server at the version go.mod
// requires, into a fresh directory, removed when tb ends.
func Build(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	for _, pkg := range []string{"github.com/vmprep/vmprep/cmd/...", "github.com/nats-io/nats-server/v2"} {
		cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return dir
}

// Proc is one running OS process whose output is kept for failure reports.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	out  *testutil.LockedBuffer
	done chan struct{}
}

// Output returns what the process wrote so far (stdout and stderr).
func (p *Proc) Output() string { return p.out.String() }

// Wait waits up to timeout for the process to exit and returns its state,
// or false if it is still running.
func (p *Proc) Wait(timeout time.Duration) (*os.ProcessState, bool) {
	select {
	case <-p.done:
		return p.Cmd.ProcessState, true
	case <-time.After(timeout):
		return nil, false
	}
}

// WaitServing waits until a stage process logs that it serves its stages
// (streams set up, consumers bound), and fails the test if it exits first.
func (p *Proc) WaitServing(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.out.String(), "serving stages=") {
		select {
		case <-p.done:
			tb.Fatalf("%s exited before serving: %s", p.Name, p.out.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not serving after %s", p.Name, timeout)
		}
	}
}

// Kill9 kills the process with SIGKILL and waits for it.
func (p *Proc) Kill9(tb testing.TB) {
	tb.Helper()
	if err := p.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		tb.Fatalf("kill -9 %s: %v", p.Name, err)
	}
	<-p.done
}

// PeakRSS returns the process's peak resident set size in bytes (Linux VmHWM).
func (p *Proc) PeakRSS() int64 { return PeakRSSOf(p.Cmd.Process.Pid) }

// PeakRSSOf returns process pid's peak resident set size in bytes (Linux
// VmHWM), or 0 when it cannot be read.
func PeakRSSOf(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// CPUTime returns the user+system CPU time the running process has used so
// far (Linux /proc/PID/stat), or 0.
func (p *Proc) CPUTime() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields count from after it.
	_, rest, ok := bytes.Cut(b, []byte(") "))
	if !ok {
		return 0
	}
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const clockTicks = 100 // USER_HZ, 100 on every Linux architecture Go supports
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// Holding reports whether the process has a file open under prefix.
func (p *Proc) Holding(prefix string) bool {
	dir := fmt.Sprintf("/proc/%d/fd", p.Cmd.Process.Pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(target, prefix) {
			return true
		}
	}
	return false
}

// Cluster is a NATS server process plus the stage processes started on it.
type Cluster struct {
	tb    testing.TB
	Bin   string
	Cache string
	NATS  string
	// StageArgs are added to every stage's command line (e.g. the resolver's
	// --mirror and --keyring are added by Stage when Mirror is set).
	MirrorURL   string
	KeyringFile string
	// Replicas is passed to stages started on hosts (0: their default).
	Replicas int
	mu       sync.Mutex
	// Server is the `vmprep serve` process New started (nil for NewNATSCluster).
	Server     *Proc
	procs      []*Proc
	mountPoint string
}

// New starts `vmprep serve --stages none` from bin with a fresh JetStream
// directory and cache; everything is stopped when tb ends.
func New(tb testing.TB, bin string) *Cluster {
	tb.Helper()
	c := &Cluster{tb: tb, Bin: bin, Cache: tb.TempDir()}
	tb.Cleanup(c.StopAll)
	cmd := exec.Command(filepath.Join(bin, "vmprep"), "serve", "--listen", "127.0.0.1:0", "--stages", "none", "--jetstream-dir", tb.TempDir(), "--cache-dir", c.Cache)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	buf := &testutil.LockedBuffer{}
	cmd.Stderr = buf
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &Proc{Name: "vmprep-serve", Cmd: cmd, out: buf, done: make(chan struct{})}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "nats: ") {
		tb.Fatalf("vmprep serve did not print its URL (%q, %v): %s", line, err, buf.String())
	}
	go func() { _, _ = io.Copy(buf, stdout); _ = cmd.Wait(); close(p.done) }()
	c.procs = append(c.procs, p)
	c.Server = p
	c.NATS = strings.TrimSpace(strings.TrimPrefix(line, "nats: "))
	return c
}

// Start runs a binary from the build directory. name may carry a "#suffix"
// to tell instances apart in reports ("fetcher#2").
func (c *Cluster) Start(name string, args ...string) *Proc {
	c.tb.Helper()
	exe, _, _ := strings.Cut(name, "#")
	return c.startCmd(name, exec.Command(filepath.Join(c.Bin, exe), args...))
}

// WaitForHolder waits until served reports at least min bytes and one of
// procs holds a file under dir open, and returns that process: the one to
// kill mid-download.
func WaitForHolder(tb testing.TB, what string, procs []*Proc, dir string, served func() int64, min int64) *Proc {
	tb.Helper()
	var holder *Proc
	WaitFor(tb, what, time.Minute, func() bool {
		if served() < min {
			return false
		}
		for _, p := range procs {
			if p.Holding(dir) {
				holder = p
				return true
			}
		}
		return false
	})
	return holder
}

// Stage starts a stage process ("resolver", "fetcher#2", …) on the cluster
// with a short ack wait, so that a killed worker's message returns quickly.
func (c *Cluster) Stage(name string, extra ...string) *Proc {
	exe, _, _ := strings.Cut(name, "#")
	args := []string{"--nats", c.NATS, "--cache-dir", c.Cache, "--ack-wait", "3s", "--concurrency", "1", "--drain-timeout", "2s"}
	if exe == "resolver" {
		if c.MirrorURL != "" {
			args = append(args, "--mirror", c.MirrorURL)
		}
		if c.KeyringFile != "" {
			args = append(args, "--keyring", c.KeyringFile)
		}
	}
	return c.Start(name, append(args, extra...)...)
}

// StopAll sends SIGTERM to every process (SIGKILL after 10 s) and, if the
// test failed, logs their output.
func (c *Cluster) StopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range c.procs {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.Cmd.Process.Kill()
			<-p.done
		}
	}
	if c.tb.Failed() {
		for _, p := range c.procs {
			c.tb.Logf("---- output of %s\n%s", p.Name, p.out.String())
		}
	}
	c.procs = nil
}

// PrepareRun is a running `vmprep prepare --nats … --json`.
type PrepareRun struct {
	cmd    *exec.Cmd
	stdout testutil.LockedBuffer
	stderr testutil.LockedBuffer
	done   chan error
	// start and end bound the run, and peak is the highest VmHWM seen
	// (all set before done is sent).
	start, end time.Time
	peak       int64
}

// run starts r.cmd and reports its end on r.done. While it runs, its peak
// RSS is sampled from /proc: wait4's ru_maxrss would not do, since a child
// started by vfork (as os/exec does) inherits its parent's high-water mark.
func (r *PrepareRun) run() error {
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	r.start = time.Now()
	if err := r.cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	sampled := make(chan int64, 1)
	go func() {
		p := &Proc{Cmd: r.cmd}
		var peak int64
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, p.PeakRSS())
			select {
			case <-exited:
				sampled <- peak
				return
			case <-tick.C:
			}
		}
	}()
	go func() {
		err := r.cmd.Wait()
		r.end = time.Now()
		close(exited)
		r.peak = <-sampled
		r.done <- err
	}()
	return nil
}

// showOnFailure has a failed test log what the run printed, whatever
// the test was waiting for when it failed.
func (r *PrepareRun) showOnFailure(tb testing.TB, name string) {
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("---- output of %s\nstderr: %s\nstdout: %s", name, r.stderr.String(), r.stdout.String())
		}
	})
}

// Wait waits for the run and returns its exit error (use it or Result,
// not both).
func (r *PrepareRun) Wait() error { return <-r.done }

// Stdout is what the finished run wrote to standard output (its JSON result).
func (r *PrepareRun) Stdout() string { return r.stdout.String() }

// Stderr is what the finished run wrote to standard error.
func (r *PrepareRun) Stderr() string { return r.stderr.String() }

// Elapsed is the finished run's wall time, from start to exit.
func (r *PrepareRun) Elapsed() time.Duration { return r.end.Sub(r.start) }

// Usage is the finished run's peak RSS in bytes (sampled every 20 ms, so a
// peak in its last moments may be missed) and its user+system CPU time.
func (r *PrepareRun) Usage() (peakRSS int64, cpu time.Duration) {
	st := r.cmd.ProcessState
	if st == nil {
		return r.peak, 0
	}
	return r.peak, st.UserTime() + st.SystemTime()
}

// Prepare starts `vmprep prepare` against the cluster.
func (c *Cluster) Prepare(arch catalog.Arch, format catalog.DiskFormat, extra ...string) *PrepareRun {
	r := &PrepareRun{done: make(chan error, 1)}
	args := append([]string{"prepare", "--nats", c.NATS, "--json", "--arch", string(arch), "--format", string(format)}, extra...)
	r.cmd = exec.Command(filepath.Join(c.Bin, "vmprep"), append(args, "ubuntu", "24.04")...)
	if err := r.run(); err != nil {
		c.tb.Fatal(err)
	}
	r.showOnFailure(c.tb, "vmprep prepare")
	return r
}

// Result waits for the run and decodes its JSON result.
func (r *PrepareRun) Result(tb testing.TB, timeout time.Duration) messages.Result {
	tb.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			tb.Fatalf("vmprep prepare: %v\nstderr: %s\nstdout: %s", err, r.stderr.String(), r.stdout.String())
		}
	case <-time.After(timeout):
		_ = r.cmd.Process.Kill()
		tb.Fatalf("vmprep prepare did not finish within %s; stderr: %s", timeout, r.stderr.String())
	}
	var res messages.Result
	if err := json.Unmarshal([]byte(r.stdout.String()), &res); err != nil {
		tb.Fatalf("prepare output is not a result: %v\n%s", err, r.stdout.String())
	}
	return res
}

// WaitFor polls cond every 2 ms until it holds or timeout passes.
func WaitFor(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

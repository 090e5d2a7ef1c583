//go:build unix

package main

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
)

// onTerminal is a child process whose stdout and stderr are a
// pseudo-terminal of 100 columns, and what it wrote there.
type onTerminal struct {
	cmd  *exec.Cmd
	out  testutil.LockedBuffer
	done chan error
}

func startOnTerminal(t *testing.T, cmd *exec.Cmd) *onTerminal {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	if err := pty.Setsize(ptmx, &pty.Winsize{Cols: 100, Rows: 40}); err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = tty, tty
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_ = tty.Close()
	ot := &onTerminal{cmd: cmd, done: make(chan error, 1)}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(&ot.out, ptmx) // ends with EIO once the child is gone
	}()
	go func() {
		err := cmd.Wait()
		<-copied
		_ = ptmx.Close()
		ot.done <- err
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	return ot
}

var ansi = regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]|\r")

// text is what the terminal showed, without the escape sequences.
func (ot *onTerminal) text() string { return ansi.ReplaceAllString(ot.out.String(), "") }

// waitFor waits until the terminal shows s (a bounded wait, not a timing check).
func (ot *onTerminal) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(ot.text(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("the terminal never showed %q:\n%s", s, ot.text())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exit waits for the child and returns its exit status (-1 if a signal ended it).
func (ot *onTerminal) exit(t *testing.T) int {
	t.Helper()
	select {
	case err := <-ot.done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return ot.cmd.ProcessState.ExitCode()
	case <-time.After(2 * time.Minute):
		t.Fatalf("still running:\n%s", ot.text())
	}
	return 0
}

// TestOfflineRunShowsWhatIsHappening (issue 11, item 4): a first run whose
// mirror cannot be reached shows on the terminal that it is resolving, then
// each retry with when, which attempt and the cause, and ends after three
// tries with the cause in one line.
func TestOfflineRunShowsWhatIsHappening(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mirror := "http://" + l.Addr().String() + "/"
	_ = l.Close() // nothing listens there now: connection refused
	ot := startOnTerminal(t, vmprepCommand(t, "prepare", "--cache-dir", t.TempDir(), "--mirror", mirror, "ubuntu", "24.04", "--arch", "amd64"))
	if code := ot.exit(t); code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	out := ot.text()
	resolving := strings.Index(out, "resolve ubuntu 24.04 amd64")
	retry2 := strings.Index(out, "retry 2 of 3 in ")
	retry3 := strings.Index(out, "retry 3 of 3 in ")
	failed := strings.Index(out, "vmprep prepare: ubuntu 24.04 amd64: resolver failed: gave up after 3 attempts")
	if resolving < 0 || retry2 < resolving || retry3 < retry2 || failed < retry3 {
		t.Errorf("want resolving, retries 2 and 3 of 3, then the failure, in that order:\n%s", out)
	}
	t.Logf("the terminal showed:\n%s", out)
	if !strings.Contains(out, "connection refused") {
		t.Errorf("the cause is not shown:\n%s", out)
	}
}

// TestInterruptStopsAndKeepsWhatWasShown (issue 16, item 5): ^C in the
// middle of a throttled download ends the process within seconds (it froze
// for the 30 s drain while the download went on), the ingest file holds at
// least the bytes the terminal showed as fetched (it held 0 bytes after 360
// KiB were shown: they were still in a buffer), and the next run resumes
// from there instead of downloading the disk again.
func TestInterruptStopsAndKeepsWhatWasShown(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(64<<20, 16<<20))
	disk := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)
	size := int64(len(m.Content(disk)))
	m.Throttle(256 << 10) // the rest takes longer than the bound below
	cache := t.TempDir()
	args := []string{"prepare", "--cache-dir", cache, "--mirror", m.URL, "--keyring", m.KeyringFile(), "--arch", "amd64", "ubuntu", "24.04"}
	ot := startOnTerminal(t, vmprepCommand(t, args...))
	ot.waitFor(t, "fetch   disk")
	for m.BytesServed(disk) < 1<<20 {
		time.Sleep(10 * time.Millisecond)
	}
	if m.BytesServed(disk) >= size {
		t.Fatalf("the disk (%d bytes) was served whole before ^C: throttle it more", size)
	}
	if err := ot.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	select {
	case <-ot.exited():
	case <-time.After(10 * time.Second): // loose: it took 30 s and more
		t.Fatalf("still running 10 s after ^C:\n%s", ot.text())
	}
	t.Logf("exited %v after ^C; the terminal showed:\n%s", time.Since(sent), ot.text())
	if code := ot.exit(t); code != 130 {
		t.Errorf("exit status %d, want 130", code)
	}
	out := ot.text()
	for _, want := range []string{"stopping: saving partial downloads", "stopped; partial downloads are kept and resume on the next run"} {
		if !strings.Contains(out, want) {
			t.Errorf("the terminal does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "context canceled") {
		t.Errorf("^C reported as an error:\n%s", out)
	}
	shown := lastShownFetched(t, out, "disk")

	// The partial download is in the ingest area, with what was shown.
	partials, _ := filepath.Glob(filepath.Join(cache, "ingest", "*"))
	var have int64
	for _, p := range partials {
		if fi, err := os.Stat(p); err == nil && !strings.HasSuffix(p, ".meta") && fi.Size() > have {
			have = fi.Size()
		}
	}
	if have < shown {
		t.Fatalf("the terminal showed %d bytes of the disk fetched, the ingest area keeps %d: %v", shown, have, partials)
	}
	m.Throttle(0)
	before := m.BytesServed(disk)
	if out, err := vmprepCommand(t, args...).CombinedOutput(); err != nil {
		t.Fatalf("the run after: %v\n%s", err, out)
	}
	if served := m.BytesServed(disk) - before; served > size-have {
		t.Errorf("the run after downloaded %d bytes of the disk; %d of %d were kept and should have been resumed", served, have, size)
	}
}

// exited is closed once the child has exited (exit then returns its status).
func (ot *onTerminal) exited() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		err := <-ot.done
		ot.done <- err // for exit
		close(ch)
	}()
	return ch
}

var fetchedRow = regexp.MustCompile(`fetch +(\S+) +\[[= ]*\] +\d+% +([0-9.]+) (B|KiB|MiB|GiB) /`)

// lastShownFetched is the byte count the terminal last showed for fetching
// asset, rounded down by the display's precision (three digits).
func lastShownFetched(t *testing.T, out, asset string) int64 {
	t.Helper()
	var shown float64
	for _, mm := range fetchedRow.FindAllStringSubmatch(out, -1) {
		if mm[1] != asset {
			continue
		}
		v, err := strconv.ParseFloat(mm[2], 64)
		if err != nil {
			t.Fatal(err)
		}
		shown = v * map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[mm[3]]
	}
	if shown == 0 {
		t.Fatalf("the terminal never showed bytes of %s fetched:\n%s", asset, out)
	}
	return int64(shown * 0.995)
}

// TestProgressWithoutTerminal (issue 16, item 9): with stderr a pipe (a
// journal, CI, docker compose run), prepare printed nothing for minutes.
// Now it prints a line when each step starts and ends and progress lines
// while a download runs, without escape sequences; --progress none prints
// none, and a wrong --progress is refused.
func TestProgressWithoutTerminal(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(64<<20, 16<<20))
	m.Throttle(2 << 20) // a few seconds for the disk: several progress lines
	prepare := func(extra ...string) (string, error) {
		args := append([]string{"prepare", "--cache-dir", t.TempDir(), "--mirror", m.URL, "--keyring", m.KeyringFile(), "--arch", "amd64"}, extra...)
		cmd := vmprepCommand(t, append(args, "ubuntu", "24.04")...)
		var stderr strings.Builder
		cmd.Stderr = &stderr // a pipe
		err := cmd.Run()
		return stderr.String(), err
	}

	out, err := prepare()
	if err != nil {
		t.Fatalf("prepare: %v\n%s", err, out)
	}
	t.Logf("stderr, a pipe:\n%s", out)
	if strings.Contains(out, "\x1b[") || strings.Contains(out, "\r") {
		t.Errorf("escape sequences or carriage returns on a pipe:\n%q", out)
	}
	if !regexp.MustCompile(`(?m)^resolve ubuntu 24\.04 amd64 .*done`).MatchString(out) {
		t.Errorf("no line saying the image was resolved:\n%s", out)
	}
	var shown []int64
	doneLine := false
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "fetch   disk") {
			continue
		}
		if strings.Contains(line, " done ") {
			doneLine = true
			continue
		}
		if mm := fetchedRow.FindStringSubmatch(line); mm != nil && !doneLine {
			shown = append(shown, lastShownFetched(t, line, "disk"))
		}
	}
	if !doneLine {
		t.Errorf("no line saying the disk was fetched:\n%s", out)
	}
	if len(shown) < 3 {
		t.Errorf("want the start and at least two progress lines while the disk downloads, got %d:\n%s", len(shown), out)
	}
	for i := 1; i < len(shown); i++ {
		if shown[i] <= shown[i-1] {
			t.Errorf("progress lines repeat or go back (%v):\n%s", shown, out)
		}
	}
	if !regexp.MustCompile(`(?m)^verify  disk .*done`).MatchString(out) {
		t.Errorf("no line saying the disk was verified:\n%s", out)
	}

	m.Throttle(0)
	if out, err := prepare("--progress", "none"); err != nil || strings.Contains(out, "fetch ") || strings.Contains(out, "resolve ") {
		t.Errorf("--progress none: %v\n%s", err, out)
	}
	if out, err := prepare("--progress", "bars"); err == nil || !strings.Contains(out, `--progress "bars": want auto, tty, plain or none`) {
		t.Errorf("--progress bars: %v\n%s", err, out)
	}
}

// TestCorruptCachedFileIsSaid (issue 16, item 10): a stored file that no
// longer matches its digest was fetched again silently, the output saying
// no network was needed; offline the run failed "gave up after 3 attempts
// … gave up after 4 attempts" without saying the cached file was corrupt.
// Both runs now say that the cached copy was corrupt and where it went.
func TestCorruptCachedFileIsSaid(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	disk := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)
	cache := t.TempDir()
	prepare := func() (stdout, stderr string, err error) {
		cmd := vmprepCommand(t, "prepare", "--cache-dir", cache, "--mirror", m.URL, "--keyring", m.KeyringFile(), "--arch", "amd64", "--format", "qcow2", "ubuntu", "24.04")
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e // pipes: plain progress
		err = cmd.Run()
		return o.String(), e.String(), err
	}
	out, errOut, err := prepare()
	if err != nil {
		t.Fatalf("first run: %v\n%s", err, errOut)
	}
	mm := regexp.MustCompile(`(?m)^disk: +(\S+) \(qcow2\)`).FindStringSubmatch(out)
	if mm == nil {
		t.Fatalf("no disk path in:\n%s", out)
	}
	blob := mm[1]
	corrupt := func() {
		t.Helper()
		b, err := os.ReadFile(blob)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff
		_ = os.Chmod(blob, 0o644)
		if err := os.WriteFile(blob, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const said = "the cached copy was corrupt (content no longer matches its digest; moved to "

	corrupt()
	out, errOut, err = prepare()
	if err != nil {
		t.Fatalf("run with a corrupt disk: %v\n%s", err, errOut)
	}
	t.Logf("a run with a corrupt cached disk:\n%s%s", errOut, out)
	if !strings.Contains(errOut, said) || !strings.Contains(errOut, "; fetching it again") {
		t.Errorf("the re-fetch of the corrupt disk is not said:\n%s", errOut)
	}
	if strings.Contains(out, "no network") {
		t.Errorf("the result says no network was needed though the disk was fetched again:\n%s", out)
	}

	// Offline for the disk: the failure says why it had to be fetched.
	corrupt()
	m.SetFault(disk, testmirror.Fault{Reset: true})
	_, errOut, err = prepare()
	if err == nil {
		t.Fatalf("a run with a corrupt disk and its origin unreachable succeeded:\n%s", errOut)
	}
	t.Logf("offline with a corrupt cached disk:\n%s", errOut)
	last := errOut[strings.LastIndex(errOut, "vmprep prepare: ubuntu 24.04 amd64:"):]
	if !strings.Contains(last, said) || !strings.Contains(last, "and fetching it again failed") {
		t.Errorf("the failure does not say the cached copy was corrupt:\n%s", last)
	}
}

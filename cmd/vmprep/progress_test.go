package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// clock is a time source the test moves by hand.
type clock struct{ t time.Time }

func (c *clock) Now() time.Time          { return c.t }
func (c *clock) Advance(d time.Duration) { c.t = c.t.Add(d) }

// testView is a progress view drawing into a buffer, on a clock of the
// test's, without the redrawing goroutine.
func testView(width int) (*progressView, *bytes.Buffer, *clock) {
	var buf bytes.Buffer
	c := &clock{t: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
	pv := &progressView{w: &buf, subject: "ubuntu 24.04 amd64", now: c.Now, width: func() int { return width },
		byKey: map[string]*progressRow{}, stop: make(chan struct{})}
	return pv, &buf, c
}

func (pv *progressView) lines() []string {
	pv.mu.Lock()
	defer pv.mu.Unlock()
	return pv.linesLocked(pv.width())
}

const mib = 1 << 20

func fetchEvent(role image.Role, done, total int64, rate float64) messages.Progress {
	return messages.Progress{RequestID: "r", Stage: messages.StageFetcher, Step: messages.StepFetch, Asset: role, Done: done, Total: total, BytesPerSecond: rate}
}

// columns returns where each column of a file line is: the bar, the
// percentage, the counts' slash and the rate's end.
func columns(t *testing.T, line string) []int {
	t.Helper()
	var cols []int
	for _, mark := range []string{"[", "%", " / ", "/s"} {
		i := strings.Index(line, mark)
		if i < 0 {
			t.Fatalf("line %q lacks %q", line, mark)
		}
		cols = append(cols, i)
	}
	return cols
}

// TestProgressColumnsStayPut: a line that appears later with wider numbers
// (a 3.5 GiB disk after a 14 MiB kernel, a faster rate) shifts no column,
// and the earlier line is drawn exactly as before.
func TestProgressColumnsStayPut(t *testing.T) {
	pv, _, c := testView(200)
	pv.update(fetchEvent(image.RoleKernel, 3*mib, 14*mib, 900*1024))
	before := pv.lines()
	c.Advance(time.Second)
	pv.update(fetchEvent(image.RoleDisk, 1000*mib+512*1024, 3584*mib, 1023*mib))
	pv.update(fetchEvent(image.RoleInitramfs, 12, 60*mib, 1.5))
	after := pv.lines()
	if len(after) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(after), strings.Join(after, "\n"))
	}
	if after[0] != before[0] {
		t.Errorf("the kernel's line changed when the disk's appeared:\n%q\n%q", before[0], after[0])
	}
	want := columns(t, after[0])
	for _, l := range after[1:] {
		if got := columns(t, l); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("columns %v of %q differ from %v of %q", got, l, want, after[0])
		}
	}
}

// TestProgressRateAndTimeLeft: the stage's rate and the time left at that
// rate; a step whose stage reports no rate (converting) is measured here.
func TestProgressRateAndTimeLeft(t *testing.T) {
	pv, _, c := testView(200)
	pv.update(fetchEvent(image.RoleDisk, 10*mib, 20*mib, 2*mib))
	conv := messages.Progress{RequestID: "r", Stage: messages.StageConverter, Step: messages.StepConvert, Asset: image.RoleDisk, Done: 0, Total: 100 * mib}
	pv.update(conv)
	c.Advance(2 * time.Second)
	conv.Done = 8 * mib
	pv.update(conv)
	lines := pv.lines()
	for i, want := range [][]string{
		{"fetch", "disk", " 50% ", "10.0 MiB / 20.0 MiB", "2.00 MiB/s", "ETA 5.0s"},
		{"convert", "disk", "  8% ", "8.00 MiB / 100 MiB", "4.00 MiB/s", "ETA 23s"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %q lacks %q", lines[i], w)
			}
		}
	}
	// A finished step says so and how long it took; rate and time left go.
	c.Advance(3 * time.Second)
	pv.update(fetchEvent(image.RoleDisk, 20*mib, 20*mib, 2*mib))
	done := pv.lines()[0]
	if !strings.Contains(done, "100% ") || !strings.Contains(done, "done 5.0s") || strings.Contains(done, "ETA") || strings.Contains(done, "MiB/s") {
		t.Errorf("finished line %q", done)
	}
}

// TestProgressShowsResolveVerifyAndRetries: resolving shows at once and is
// done when work on files starts; verifying has a line of its own; a retry
// says when and which attempt, with the cause on a line below (its end kept
// when too long), and goes away when bytes flow again.
func TestProgressShowsResolveVerifyAndRetries(t *testing.T) {
	pv, _, c := testView(80)
	pv.update(messages.Progress{RequestID: "r", Stage: messages.StageResolver, Step: messages.StepResolve})
	if l := pv.lines(); len(l) != 1 || l[0] != "resolve ubuntu 24.04 amd64  … 0.0s" {
		t.Fatalf("resolving: %q", l)
	}
	cause := "resolve ubuntu 24.04 amd64: list serials https://cloud-images.ubuntu.com/releases/24.04/: Get \"https://cloud-images.ubuntu.com/releases/24.04/\": dial tcp: lookup cloud-images.ubuntu.com: no such host"
	pv.update(messages.Progress{RequestID: "r", Stage: messages.StageResolver, Step: messages.StepResolve,
		Retrying: cause, RetryInSeconds: 2, Attempt: 2, MaxAttempts: 3})
	lines := pv.lines()
	if len(lines) != 2 || lines[0] != "resolve ubuntu 24.04 amd64  retry 2 of 3 in 2s" {
		t.Errorf("retrying: %q", lines)
	}
	if len(lines) == 2 && (!strings.HasPrefix(lines[1], "        …") || !strings.HasSuffix(lines[1], "dial tcp: lookup cloud-images.ubuntu.com: no such host") || len([]rune(lines[1])) != 79) {
		t.Errorf("the cause on 80 columns: %q", lines[1])
	}
	c.Advance(2500 * time.Millisecond)
	if l := pv.lines()[0]; !strings.HasSuffix(l, "retry 2 of 3 now") {
		t.Errorf("retry due: %q", l)
	}
	pv.update(fetchEvent(image.RoleDisk, 0, 4*mib, 0))
	pv.update(messages.Progress{RequestID: "r", Stage: messages.StageFetcher, Step: messages.StepFetch, Asset: image.RoleDisk,
		Retrying: "HTTP 503\nService Unavailable", RetryInSeconds: 1})
	lines = pv.lines()
	if len(lines) != 3 || lines[0] != "resolve ubuntu 24.04 amd64  done 2.5s" {
		t.Fatalf("resolve not done once fetching started:\n%s", strings.Join(lines, "\n"))
	}
	if lines[1] != "fetch   disk      [          ]   0%      0 B / 4.00 MiB  retry in 1s" || lines[2] != "        HTTP 503 Service Unavailable" {
		t.Errorf("fetch retry:\n%s", strings.Join(lines, "\n"))
	}
	pv.update(fetchEvent(image.RoleDisk, 4*mib, 4*mib, 0))
	pv.update(messages.Progress{RequestID: "r", Stage: messages.StageVerifier, Step: messages.StepVerify, Asset: image.RoleDisk, Total: 4 * mib})
	lines = pv.lines()
	if len(lines) != 3 || strings.Contains(lines[1], "retry") || !strings.HasPrefix(lines[2], "verify  disk      [          ]   0%      0 B / 4.00 MiB") {
		t.Errorf("after the retry, then verifying:\n%s", strings.Join(lines, "\n"))
	}
	pv.mu.Lock()
	pv.markLocked(rowFailed)
	pv.mu.Unlock()
	if l := pv.lines()[2]; !strings.HasSuffix(l, "failed") {
		t.Errorf("failed step: %q", l)
	}
}

// TestCompactSize: at most 8 columns, three or four significant digits.
func TestCompactSize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.00 KiB"}, {14 * mib, "14.0 MiB"}, {1023*mib + 1, "1023 MiB"},
		{3584 * mib, "3.50 GiB"}, {9996 * mib / 100, "100 MiB"}, {9996 * mib / 1000, "10.0 MiB"},
	} {
		if got := compactSize(tc.n); got != tc.want || len(got) > colSize {
			t.Errorf("compactSize(%d) = %q, want %q (at most %d columns)", tc.n, got, tc.want, colSize)
		}
	}
}

// TestProgressPaintsInPlace: each redraw goes back up over the lines drawn
// before and clears each line; lines are cut to the terminal's width so
// that none wraps.
func TestProgressPaintsInPlace(t *testing.T) {
	pv, buf, _ := testView(60)
	pv.update(fetchEvent(image.RoleKernel, mib, 2*mib, mib))
	pv.mu.Lock()
	pv.paintLocked()
	pv.mu.Unlock()
	first := buf.String()
	if strings.Contains(first, "\x1b[1A") || strings.Count(first, "\x1b[2K") != 1 || strings.Count(first, "\n") != 1 {
		t.Errorf("first paint %q", first)
	}
	pv.update(fetchEvent(image.RoleDisk, mib, 2*mib, mib))
	buf.Reset()
	pv.mu.Lock()
	pv.paintLocked()
	pv.mu.Unlock()
	second := buf.String()
	if !strings.HasPrefix(second, "\r\x1b[1A") || strings.Count(second, "\x1b[2K") != 2 || !strings.HasSuffix(second, "\x1b[J") {
		t.Errorf("second paint %q", second)
	}
	for _, l := range strings.Split(strings.TrimSuffix(second, "\n\x1b[J"), "\n") {
		l = strings.TrimPrefix(strings.TrimPrefix(l, "\r\x1b[1A"), "\x1b[2K")
		if n := len([]rune(l)); n > 59 || !strings.HasSuffix(l, "…") {
			t.Errorf("line of %d runes on a 60-column terminal: %q", n, l)
		}
	}
}

// TestProgressDisabled: not a terminal (or --json): nothing is drawn.
func TestProgressDisabled(t *testing.T) {
	var buf bytes.Buffer
	pv := newProgressView(context.Background(), &buf, "ubuntu 24.04 amd64", progressNone)
	pv.update(fetchEvent(image.RoleDisk, 1, 2, 1))
	pv.finish(true)
	if buf.Len() != 0 {
		t.Errorf("drew %q", buf.String())
	}
}

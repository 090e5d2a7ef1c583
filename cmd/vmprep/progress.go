package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/term"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// progressView shows a request on a terminal, one line per step and asset:
// resolving the image, then fetching, verifying and converting each file with
// a bar, counts, rate and time left; a failure being retried, with its cause
// and when the next try comes. Every column has a fixed width, so a line
// that appears later (a larger file) never shifts the others. The lines are
// redrawn in place a few times a second. In plain mode (stderr is a pipe, a
// journal, a CI log) the same lines are printed one after another instead,
// without escape sequences: when a step starts, ends or is retried, and
// while it runs every plainEvery or each tenth of its size, whichever comes
// first. With progressNone it prints nothing.
type progressView struct {
	mu      sync.Mutex
	w       io.Writer
	mode    progressMode
	subject string // the image: "ubuntu 24.04 amd64"
	now     func() time.Time
	width   func() int
	rows    []*progressRow
	byKey   map[string]*progressRow
	drawn   int // lines the last paint drew
	stopped bool
	stop    chan struct{}
	done    chan struct{}
}

// Row states.
const (
	rowRunning = iota
	rowDone
	rowFailed
	rowStopped
)

type progressRow struct {
	step  string
	asset image.Role
	state int

	done, total int64
	rate        float64 // bytes per second: the stage's, else measured here
	started     time.Time
	ended       time.Time
	// sample is the last (time, done) pair a measured rate started from.
	sampleAt   time.Time
	sampleDone int64

	note         string // a remark on the step: the cached copy was corrupt
	retry        string // the failure being retried
	retryAt      time.Time
	attempt, max int

	// What plain mode printed last, to print again only on news.
	printed      bool
	printedState int
	printedRetry string
	printedNote  string
	printedAt    time.Time
	printedDone  int64
}

// progressMode is how progress is shown (--progress).
type progressMode string

const (
	progressAuto  progressMode = "auto"  // tty on a terminal, else plain
	progressTTY   progressMode = "tty"   // lines redrawn in place
	progressPlain progressMode = "plain" // lines appended: logs, pipes
	progressNone  progressMode = "none"
)

// parseProgressMode reads --progress.
func parseProgressMode(s string) (progressMode, error) {
	switch m := progressMode(s); m {
	case progressAuto, progressTTY, progressPlain, progressNone:
		return m, nil
	}
	return "", fmt.Errorf("--progress %q: want auto, tty, plain or none", s)
}

// resolve turns auto into tty or plain for w. With --json, auto shows
// nothing (as before plain mode existed): the caller reads the JSON.
func (m progressMode) resolve(w io.Writer, asJSON bool) progressMode {
	if m != progressAuto {
		return m
	}
	switch {
	case asJSON:
		return progressNone
	case cli.IsTerminal(w):
		return progressTTY
	}
	return progressPlain
}

// plainEvery is how often plain mode prints a running step's progress at
// least (and at most, unless another tenth of the file has come).
const plainEvery = 5 * time.Second

// Column widths, for an 80-column terminal: sizes print as at most
// "1023 MiB" (8), rates as "1023 MiB/s" (10).
const (
	colStep  = 7  // "resolve", "convert"
	colAsset = 9  // "initramfs"
	barWidth = 10 // inside the brackets
	colSize  = 8
	colRate  = 10
	// causeIndent puts a retry's cause under the asset column.
	causeIndent = colStep + 1
)

// refreshEvery is how often the lines are redrawn.
const refreshEvery = 150 * time.Millisecond

func newProgressView(ctx context.Context, w io.Writer, subject string, mode progressMode) *progressView {
	pv := &progressView{w: w, mode: mode, subject: subject, now: time.Now, width: terminalWidth(w), byKey: map[string]*progressRow{}}
	if mode != progressTTY && mode != progressPlain {
		return pv
	}
	pv.stop, pv.done = make(chan struct{}), make(chan struct{})
	go pv.refresh(ctx)
	return pv
}

// refresh redraws until finish, or until ctx ends (Ctrl-C: the lines stay
// as they were, and the stopping message follows them).
func (pv *progressView) refresh(ctx context.Context) {
	defer close(pv.done)
	t := time.NewTicker(refreshEvery)
	defer t.Stop()
	for {
		select {
		case <-pv.stop:
			return
		case <-ctx.Done():
			pv.mu.Lock()
			pv.markLocked(rowStopped)
			pv.paintLocked()
			pv.stopped = true
			pv.mu.Unlock()
			return
		case <-t.C:
			pv.mu.Lock()
			if !pv.stopped {
				pv.paintLocked()
			}
			pv.mu.Unlock()
		}
	}
}

// terminalWidth returns how many columns w's terminal has (lines longer
// than that would wrap and break the redrawing), 80 if it cannot say.
func terminalWidth(w io.Writer) func() int {
	return func() int {
		if f, ok := w.(*os.File); ok {
			if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 0 {
				return cols
			}
		}
		return 80
	}
}

// update takes one progress event (from the NATS connection's goroutine).
func (pv *progressView) update(ev messages.Progress) {
	if pv.stop == nil {
		return
	}
	pv.mu.Lock()
	defer pv.mu.Unlock()
	pv.applyLocked(ev)
}

func (pv *progressView) applyLocked(ev messages.Progress) {
	step := ev.Step
	if step == "" {
		step = messages.StepFetch
		if ev.Stage == messages.StageConverter {
			step = messages.StepConvert
		}
	}
	now := pv.now()
	if step != messages.StepResolve {
		// Work on files has begun: the image is resolved.
		if r := pv.byKey[messages.StepResolve]; r != nil && r.state == rowRunning {
			r.state, r.ended, r.retry = rowDone, now, ""
		}
	}
	key := step
	if step != messages.StepResolve {
		key += " " + string(ev.Asset)
	}
	r, ok := pv.byKey[key]
	if !ok {
		r = &progressRow{step: step, asset: ev.Asset, started: now, sampleAt: now}
		pv.byKey[key] = r
		pv.rows = append(pv.rows, r)
	}
	if ev.Note != "" {
		r.note = ev.Note
		if ev.Total > 0 {
			r.total = ev.Total
		}
		return
	}
	if ev.Retrying != "" {
		r.retry = ev.Retrying
		r.retryAt = now.Add(time.Duration(ev.RetryInSeconds * float64(time.Second)))
		r.attempt, r.max = ev.Attempt, ev.MaxAttempts
		r.state = rowRunning
		return
	}
	r.retry = ""
	if r.state != rowRunning {
		// A step done before starts again (a redelivery): measure afresh.
		r.state, r.started, r.sampleAt, r.sampleDone = rowRunning, now, now, 0
	}
	if ev.Total > 0 {
		r.total = ev.Total
	}
	switch {
	case ev.BytesPerSecond > 0:
		r.rate = ev.BytesPerSecond
	case ev.Done < r.sampleDone:
		r.sampleAt, r.sampleDone = now, ev.Done
	case now.Sub(r.sampleAt) >= time.Second:
		// Stages that do not report a rate (converting, pulling): measure
		// it over a second or more, smoothed.
		cur := float64(ev.Done-r.sampleDone) / now.Sub(r.sampleAt).Seconds()
		if r.rate == 0 {
			r.rate = cur
		} else {
			r.rate = 0.5*r.rate + 0.5*cur
		}
		r.sampleAt, r.sampleDone = now, ev.Done
	}
	r.done = ev.Done
	if r.total > 0 && r.done >= r.total {
		r.state, r.ended = rowDone, now
	}
}

// markLocked ends every running row with state.
func (pv *progressView) markLocked(state int) {
	now := pv.now()
	for _, r := range pv.rows {
		if r.state == rowRunning {
			r.state, r.ended, r.retry = state, now, ""
			if state == rowDone {
				if r.total > 0 {
					r.done = r.total
				}
			}
		}
	}
}

// note prints a line above the bars (or alone, when there are none).
func (pv *progressView) note(msg string) {
	pv.mu.Lock()
	defer pv.mu.Unlock()
	if pv.stop == nil || pv.stopped {
		fmt.Fprintln(pv.w, msg)
		return
	}
	if pv.drawn > 0 {
		fmt.Fprintf(pv.w, "\r\x1b[%dA\x1b[J", pv.drawn)
		pv.drawn = 0
	}
	fmt.Fprintln(pv.w, msg)
	pv.paintLocked()
}

// finish marks what is still running as done (ok) or failed, draws the
// lines a last time and stops redrawing.
func (pv *progressView) finish(ok bool) {
	if pv.stop == nil {
		return
	}
	close(pv.stop)
	<-pv.done
	pv.mu.Lock()
	defer pv.mu.Unlock()
	if pv.stopped {
		return
	}
	if ok {
		pv.markLocked(rowDone)
	} else {
		pv.markLocked(rowFailed)
	}
	pv.paintLocked()
	pv.stopped = true
}

// paintLocked redraws the lines in place: up to the first line drawn
// before, then each line cleared and written, then whatever is left below
// (a retry's cause that went away) cleared.
func (pv *progressView) paintLocked() {
	if pv.mode == progressPlain {
		pv.printLocked()
		return
	}
	lines := pv.linesLocked(pv.width())
	var b strings.Builder
	if pv.drawn > 0 {
		fmt.Fprintf(&b, "\r\x1b[%dA", pv.drawn)
	}
	for _, l := range lines {
		b.WriteString("\x1b[2K")
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteString("\x1b[J")
	pv.drawn = len(lines)
	_, _ = io.WriteString(pv.w, b.String())
}

// printLocked appends a line for each row with news since its last one: it
// started, ended, is being retried (with the cause), or it runs and
// plainEvery has passed or another tenth of its size has come.
func (pv *progressView) printLocked() {
	now := pv.now()
	var b strings.Builder
	for _, r := range pv.rows {
		news := !r.printed || r.state != r.printedState || r.retry != r.printedRetry || r.note != r.printedNote
		if !news && r.state == rowRunning && r.done != r.printedDone {
			tenth := r.total > 0 && r.done-r.printedDone >= r.total/10
			news = tenth || now.Sub(r.printedAt) >= plainEvery
		}
		if !news {
			continue
		}
		b.WriteString(strings.TrimRight(pv.line(r, now), " "))
		b.WriteByte('\n')
		if r.note != "" && r.note != r.printedNote {
			b.WriteString(strings.Repeat(" ", causeIndent) + oneLine(r.note) + "\n")
		}
		if r.retry != "" && r.retry != r.printedRetry {
			b.WriteString(strings.Repeat(" ", causeIndent) + oneLine(r.retry) + "\n")
		}
		r.printed, r.printedState, r.printedRetry, r.printedNote, r.printedAt, r.printedDone = true, r.state, r.retry, r.note, now, r.done
	}
	_, _ = io.WriteString(pv.w, b.String())
}

// linesLocked formats every row for a terminal of width columns. A row
// being retried has a second line with the cause, whose end (the root
// cause: "…: no such host") is kept when it is too long.
func (pv *progressView) linesLocked(width int) []string {
	now := pv.now()
	out := make([]string, 0, len(pv.rows))
	for _, r := range pv.rows {
		out = append(out, fitWidth(pv.line(r, now), width-1))
		if r.note != "" {
			out = append(out, strings.Repeat(" ", causeIndent)+fitWidth(oneLine(r.note), width-1-causeIndent))
		}
		if r.retry != "" {
			out = append(out, strings.Repeat(" ", causeIndent)+fitWidthLeft(oneLine(r.retry), width-1-causeIndent))
		}
	}
	return out
}

// line formats a row: what and for which file, a bar, the percentage, the
// counts and the rate in columns of fixed width, then the state.
func (pv *progressView) line(r *progressRow, now time.Time) string {
	if r.step == messages.StepResolve {
		return fmt.Sprintf("%-*s %s  %s", colStep, r.step, pv.subject, r.status(now))
	}
	head := fmt.Sprintf("%-*s %-*s ", colStep, r.step, colAsset, r.asset)
	bar, pct := "["+strings.Repeat(" ", barWidth)+"]", "    "
	if r.total > 0 {
		frac := math.Min(float64(r.done)/float64(r.total), 1)
		n := int(frac * barWidth)
		bar = "[" + strings.Repeat("=", n) + strings.Repeat(" ", barWidth-n) + "]"
		pct = fmt.Sprintf("%3d%%", int(frac*100))
	}
	total := "?"
	if r.total > 0 {
		total = compactSize(r.total)
	}
	counts := fmt.Sprintf("%*s / %-*s", colSize, compactSize(r.done), colSize, total)
	if r.retry != "" {
		// No rate while waiting to retry: the state gets the room.
		return fmt.Sprintf("%s%s %s %s  %s", head, bar, pct, counts, r.status(now))
	}
	rate := ""
	if r.rate > 0 && r.state == rowRunning {
		rate = compactSize(int64(r.rate)) + "/s"
	}
	return fmt.Sprintf("%s%s %s %s  %*s  %s", head, bar, pct, counts, colRate, rate, r.status(now))
}

// compactSize formats a byte count in at most 8 columns: three or four
// significant digits and a binary unit ("3.50 GiB", "14.0 MiB", "1023 MiB").
func compactSize(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	unit := ""
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"} {
		v /= 1024
		unit = u
		if v < 1024 {
			break
		}
	}
	switch {
	case v < 9.995:
		return fmt.Sprintf("%.2f %s", v, unit)
	case v < 99.95:
		return fmt.Sprintf("%.1f %s", v, unit)
	}
	return fmt.Sprintf("%.0f %s", v, unit)
}

// status is the row's state in words: done (with the time it took), failed,
// a retry under way, or the time elapsed while it runs.
func (r *progressRow) status(now time.Time) string {
	switch {
	case r.retry != "":
		when := "now"
		if d := r.retryAt.Sub(now); d > 0 {
			when = fmt.Sprintf("in %ds", int(math.Ceil(d.Seconds())))
		}
		if r.max > 0 {
			return fmt.Sprintf("retry %d of %d %s", r.attempt, r.max, when)
		}
		return "retry " + when
	case r.state == rowDone:
		return "done " + shortDuration(r.ended.Sub(r.started))
	case r.state == rowFailed:
		return "failed"
	case r.state == rowStopped:
		return "stopped"
	case r.rate > 0 && r.total > r.done:
		return "ETA " + shortDuration(time.Duration(float64(r.total-r.done)/r.rate*float64(time.Second)))
	}
	return "… " + shortDuration(now.Sub(r.started))
}

// shortDuration formats d compactly: "0.4s", "12s", "3m05s", "1h02m".
func shortDuration(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
		fallthrough
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 100*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return ">99h"
}

// fitWidthLeft cuts s to its last n runes, marking the cut.
func fitWidthLeft(s string, n int) string {
	if n < 1 || utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return "…" + string(r[len(r)-n+1:])
}

// fitWidth cuts s to n runes (terminal columns), marking the cut.
func fitWidth(s string, n int) string {
	if n < 1 || utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

package main

import (
	"context"
	"io"
	"sync"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"github.com/vmprep/vmprep/pkg/messages"
)

// progressBars shows one bar per asset and step, fed by progress events. When
// disabled (not a terminal, or --json) it does nothing.
type progressBars struct {
	mu   sync.Mutex
	p    *mpb.Progress
	bars map[string]*mpb.Bar
}

func newProgressBars(ctx context.Context, w io.Writer, enabled bool) *progressBars {
	pb := &progressBars{bars: map[string]*mpb.Bar{}}
	if enabled {
		pb.p = mpb.NewWithContext(ctx, mpb.WithOutput(w), mpb.WithWidth(40))
	}
	return pb
}

func (pb *progressBars) update(ev messages.Progress) {
	if pb.p == nil || ev.Retrying != "" {
		return // a retry note carries no counts
	}
	verb := ev.Step
	if verb == "" {
		verb = "fetch"
		if ev.Stage == messages.StageConverter {
			verb = "convert"
		}
	}
	key := verb + " " + string(ev.Asset)
	pb.mu.Lock()
	defer pb.mu.Unlock()
	bar, ok := pb.bars[key]
	if !ok {
		bar = pb.p.AddBar(ev.Total,
			mpb.PrependDecorators(decor.Name(key, decor.WCSyncSpaceR), decor.CountersKibiByte("% .1f / % .1f", decor.WCSyncSpace)),
			mpb.AppendDecorators(decor.Percentage(decor.WCSyncSpace)),
		)
		pb.bars[key] = bar
	}
	if ev.Total > 0 {
		bar.SetTotal(ev.Total, false)
	}
	bar.SetCurrent(ev.Done)
	if ev.Total > 0 && ev.Done >= ev.Total {
		bar.SetTotal(ev.Total, true)
	}
}

// finish completes or drops the bars and waits for the last render.
func (pb *progressBars) finish(ok bool) {
	if pb.p == nil {
		return
	}
	pb.mu.Lock()
	for _, b := range pb.bars {
		if ok {
			b.SetTotal(-1, true)
		} else {
			b.Abort(false)
		}
	}
	pb.mu.Unlock()
	pb.p.Wait()
}

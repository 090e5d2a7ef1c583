// Package ctxio makes a streaming copy stop when its context ends: io.Copy
// takes no context, but reads from Reader(ctx, r) fail with ctx's error once
// it is done, so the copy stops within one read.
package ctxio

import (
	"context"
	"io"
)

// Reader reads from r until ctx ends, then returns ctx's error.
func Reader(ctx context.Context, r io.Reader) io.Reader { return reader{ctx, r} }

type reader struct {
	ctx context.Context
	r   io.Reader
}

func (c reader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

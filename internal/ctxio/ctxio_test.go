package ctxio

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

// chunks hands out one byte per Read and cancels ctx after the third.
type chunks struct {
	data   string
	reads  int
	cancel context.CancelFunc
}

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	c.reads++
	if c.reads == 3 {
		c.cancel()
	}
	p[0], c.data = c.data[0], c.data[1:]
	return 1, nil
}

func TestReaderStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	n, err := io.Copy(&out, Reader(ctx, &chunks{data: "abcdefgh", cancel: cancel}))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("copy = %v, want context.Canceled", err)
	}
	if n != 3 || out.String() != "abc" {
		t.Errorf("copied %d bytes %q, want the 3 read before the cancel", n, out.String())
	}
}

func TestReaderPassesThrough(t *testing.T) {
	var out bytes.Buffer
	if _, err := io.Copy(&out, Reader(context.Background(), strings.NewReader("all of it"))); err != nil {
		t.Fatal(err)
	}
	if out.String() != "all of it" {
		t.Errorf("copied %q", out.String())
	}
}

package testutil

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestExampleTB(t *testing.T) {
	e := NewExampleTB("ExampleX")
	var order []int
	e.Cleanup(func() { order = append(order, 1) })
	dir := e.TempDir()
	e.Cleanup(func() { order = append(order, 2) })
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("TempDir %s: %v", dir, err)
	}
	ctx := e.Context()
	e.Close()
	if len(order) != 2 || order[0] != 2 || order[1] != 1 {
		t.Errorf("cleanups ran in order %v, want [2 1]", order)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("TempDir %s left after Close: %v", dir, err)
	}
	if ctx.Err() == nil {
		t.Error("Context still live after Close")
	}
}

func TestExampleTBFailures(t *testing.T) {
	tests := []struct {
		name string
		fail func(e *ExampleTB)
		want string
	}{
		{"Fatalf panics", func(e *ExampleTB) { e.Fatalf("no %s", "qemu-img") }, "no qemu-img"},
		{"FailNow panics", func(e *ExampleTB) { e.FailNow() }, "FailNow"},
		{"Skip is a failure", func(e *ExampleTB) { e.Skip("not here") }, "not here"},
		{"Errorf fails at Close", func(e *ExampleTB) { e.Errorf("bad"); e.Close() }, "failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := NewExampleTB("ExampleY")
			defer func() {
				p := recover()
				msg, _ := p.(string)
				if !strings.Contains(msg, tc.want) || !strings.Contains(msg, "ExampleY") {
					t.Errorf("panic %v, want one naming the example and %q", p, tc.want)
				}
			}()
			tc.fail(e)
		})
	}
}

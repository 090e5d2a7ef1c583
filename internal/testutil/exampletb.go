package testutil

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"testing"
)

// ExampleTB lets an Example function, which gets no *testing.T, use the
// helpers that take a testing.TB (testmirror.New, signtest.NewKey), so that
// examples run against the same real parts as the tests. Fatal and FailNow
// panic, which fails the example with the message; Error marks the example
// failed and Close then panics; TempDir and Cleanup work as in a test, and
// Close runs the cleanups and removes the directories. Log output goes to
// stderr, out of the way of the example's checked output.
type ExampleTB struct {
	// testing.TB has an unexported method, so a type of our own satisfies it
	// only by embedding; every exported method is implemented below and the
	// nil interface is never called.
	testing.TB

	name     string
	ctx      context.Context
	cancel   context.CancelFunc
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

// NewExampleTB returns an ExampleTB named name. Defer its Close.
func NewExampleTB(name string) *ExampleTB {
	ctx, cancel := context.WithCancel(context.Background())
	return &ExampleTB{name: name, ctx: ctx, cancel: cancel}
}

// Close runs the cleanups, last registered first, and panics if the example
// reported an error.
func (e *ExampleTB) Close() {
	e.cancel()
	e.mu.Lock()
	cs := slices.Clone(e.cleanups)
	e.cleanups = nil
	failed := e.failed
	e.mu.Unlock()
	for _, c := range slices.Backward(cs) {
		c()
	}
	if failed {
		panic(e.name + ": failed (see stderr)")
	}
}

func (e *ExampleTB) Cleanup(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cleanups = append(e.cleanups, f)
}

func (e *ExampleTB) TempDir() string {
	dir, err := os.MkdirTemp("", "vmprep-example-")
	if err != nil {
		e.Fatalf("TempDir: %v", err)
	}
	e.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (e *ExampleTB) ArtifactDir() string { return e.TempDir() }

func (e *ExampleTB) Context() context.Context { return e.ctx }
func (e *ExampleTB) Name() string             { return e.name }
func (e *ExampleTB) Helper()                  {}
func (e *ExampleTB) Attr(key, value string)   {}
func (e *ExampleTB) Output() io.Writer        { return os.Stderr }

func (e *ExampleTB) Log(args ...any) { fmt.Fprintln(os.Stderr, args...) }
func (e *ExampleTB) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func (e *ExampleTB) Fail() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failed = true
}

func (e *ExampleTB) Failed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.failed
}

func (e *ExampleTB) Error(args ...any) { e.Log(args...); e.Fail() }
func (e *ExampleTB) Errorf(format string, args ...any) {
	e.Logf(format, args...)
	e.Fail()
}

func (e *ExampleTB) FailNow()          { panic(e.name + ": FailNow") }
func (e *ExampleTB) Fatal(args ...any) { panic(e.name + ": " + fmt.Sprint(args...)) }
func (e *ExampleTB) Fatalf(format string, args ...any) {
	panic(e.name + ": " + fmt.Sprintf(format, args...))
}

// An example cannot be skipped: saying so is a failure.
func (e *ExampleTB) SkipNow()                         { panic(e.name + ": skipped") }
func (e *ExampleTB) Skip(args ...any)                 { e.Fatal(args...) }
func (e *ExampleTB) Skipf(format string, args ...any) { e.Fatalf(format, args...) }
func (e *ExampleTB) Skipped() bool                    { return false }

func (e *ExampleTB) Setenv(key, value string) {
	old, had := os.LookupEnv(key)
	if err := os.Setenv(key, value); err != nil {
		e.Fatalf("Setenv: %v", err)
	}
	e.Cleanup(func() {
		if had {
			_ = os.Setenv(key, old)
		} else {
			_ = os.Unsetenv(key)
		}
	})
}

func (e *ExampleTB) Chdir(dir string) {
	old, err := os.Getwd()
	if err != nil {
		e.Fatalf("Chdir: %v", err)
	}
	if err := os.Chdir(dir); err != nil {
		e.Fatalf("Chdir: %v", err)
	}
	e.Cleanup(func() { _ = os.Chdir(old) })
}

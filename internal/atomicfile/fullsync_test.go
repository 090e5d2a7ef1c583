//go:build linux || darwin

package atomicfile

import (
	"errors"
	"os"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFullSync: which answers of F_FULLFSYNC make macOS's Sync fall back to
// fsync, and which are the result.
func TestFullSync(t *testing.T) {
	tests := []struct {
		name      string
		full      []error // F_FULLFSYNC's answers, one per call
		plain     []error // fsync's answers
		wantCalls []string
		wantErr   error
	}{
		{"flushed", []error{nil}, nil, []string{"full"}, nil},
		{"I/O error is the answer", []error{unix.EIO}, nil, []string{"full"}, unix.EIO},
		{"SMB: ENOTSUP", []error{unix.ENOTSUP}, []error{nil}, []string{"full", "plain"}, nil},
		{"EINVAL as os wraps it", []error{&os.PathError{Op: "fcntl", Path: "x", Err: unix.EINVAL}}, []error{nil}, []string{"full", "plain"}, nil},
		{"ENOTTY, then fsync fails", []error{unix.ENOTTY}, []error{unix.EIO}, []string{"full", "plain"}, unix.EIO},
		{"interrupted", []error{unix.EINTR, unix.EINTR, nil}, nil, []string{"full", "full", "full"}, nil},
		{"fsync interrupted", []error{unix.EOPNOTSUPP}, []error{unix.EINTR, nil}, []string{"full", "plain", "plain"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var calls []string
			answer := func(name string, errs *[]error) func() error {
				return func() error {
					calls = append(calls, name)
					if len(*errs) == 0 {
						t.Fatalf("%s called more often than expected", name)
					}
					err := (*errs)[0]
					*errs = (*errs)[1:]
					return err
				}
			}
			err := fullSync(answer("full", &tc.full), answer("plain", &tc.plain))
			if !errors.Is(err, tc.wantErr) || (err != nil) != (tc.wantErr != nil) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(calls, tc.wantCalls) {
				t.Errorf("calls = %v, want %v", calls, tc.wantCalls)
			}
		})
	}
}

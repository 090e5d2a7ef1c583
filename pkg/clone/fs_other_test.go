//go:build !linux

package clone

import (
	"testing"

	"github.com/vmprep/vmprep/internal/testutil"
)

func mountFS(t *testing.T, kind string) string { return testutil.MountLoopFS(t, kind) }

func sharedBytes(t *testing.T, path string) (shared, mapped int64) {
	t.Skip("FIEMAP: Linux only")
	return 0, 0
}

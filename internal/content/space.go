package content

import (
	"errors"
	"fmt"
)

// SpaceError reports a file system without room; it matches ErrInsufficientSpace.
type SpaceError struct {
	Path      string
	Need      int64 // bytes asked for
	Reserve   int64 // WithMinFree reserve kept on top
	Available int64
	Total     int64 // the file system's size, 0 if unknown
}

func (e *SpaceError) Error() string {
	reserve := ""
	if e.Reserve > 0 {
		reserve = fmt.Sprintf(" plus a %s reserve", HumanSize(e.Reserve))
	}
	msg := fmt.Sprintf("store: %s: %v: need %s%s, %s available",
		e.Path, ErrInsufficientSpace, HumanSize(e.Need), reserve, HumanSize(e.Available))
	if e.Permanent() {
		msg += fmt.Sprintf(", more than the whole %s file system holds", HumanSize(e.Total))
	}
	return msg
}

// Is makes errors.Is(err, ErrInsufficientSpace) work.
func (e *SpaceError) Is(target error) bool { return target == ErrInsufficientSpace }

// Permanent reports whether freeing space can never help: more is needed
// than the whole file system holds. Otherwise space may be freed (by GC,
// by another download finishing) and a later attempt may succeed.
func (e *SpaceError) Permanent() bool {
	return e.Total > 0 && (e.Need > e.Total || e.Reserve > e.Total-e.Need)
}

// CheckFree returns a *SpaceError unless the file system holding dir (the
// root if dir is "") has need bytes available plus the WithMinFree reserve;
// the error is Permanent when even the whole file system is too small. On
// platforms where free space cannot be read it returns nil.
func (s *Store) CheckFree(dir string, need int64) error {
	if dir == "" {
		dir = s.root
	}
	avail, total, err := diskSpace(dir)
	if errors.Is(err, errSpaceUnknown) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: free space of %s: %w", dir, err)
	}
	if need < 0 {
		need = 0
	}
	if avail < need || avail-need < s.minFree {
		return &SpaceError{Path: dir, Need: need, Reserve: s.minFree, Available: avail, Total: total}
	}
	return nil
}

// HumanSize formats a byte count with binary units ("1.5 GiB", "512 B").
func HumanSize(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := -1
	for (v >= unit || v <= -unit) && i < len(units)-1 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

// errSpaceUnknown: the platform offers no way to read free space.
var errSpaceUnknown = errors.New("free space unknown on this platform")

// capBytes multiplies a block count by a block size without overflowing.
func capBytes(blocks, size uint64) int64 {
	const limit = 1 << 62
	if size != 0 && blocks > limit/size {
		return limit
	}
	return int64(blocks * size)
}

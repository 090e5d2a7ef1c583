package content

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vmprep/vmprep/internal/atomicfile"
)

// WriteAtomic publishes dst: write is called with a temporary file in dst's
// directory (named ".<base>.tmp-*", which GC removes when stale); the file is
// then chmodded to perm, fsynced, renamed to dst and the directory fsynced.
// On any error before the rename the temporary file is removed and dst is
// untouched; write's own error is returned as it is.
// Producers given a path by PutDerived may use it.
func WriteAtomic(dst string, perm os.FileMode, write func(f *os.File) error) error {
	return atomicfile.Write(dst, perm, write)
}

// errDamaged marks a store metadata file that cannot be what the store
// wrote (wrong type, oversized): callers treat it like a missing one.
var errDamaged = errors.New("damaged")

// ReadCapped reads a small store-owned file, refusing more than max bytes so
// that a damaged or hostile file cannot make us allocate without bound, and
// refusing anything but a regular file: a symlink could lead out of the root
// and a named pipe would block the reader forever.
func ReadCapped(path string, max int64) ([]byte, error) {
	f, err := openSmall(path)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s: %w: a symlink, not a regular file", path, errDamaged)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: a %s, not a regular file", path, errDamaged, fileKind(fi.Mode()))
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: %w: larger than %d bytes", path, errDamaged, max)
	}
	return b, nil
}

// ValidComponent accepts one path element made of [A-Za-z0-9._+~@-], not
// starting with '.', at most 128 bytes: nothing that could escape the root
// (separators, "..", NUL) or hide as a dot-file.
func ValidComponent(what, v string) error {
	if v == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalidName, what)
	}
	if len(v) > 128 {
		return fmt.Errorf("%w: %s is %d bytes long (max 128)", ErrInvalidName, what, len(v))
	}
	if v[0] == '.' {
		return fmt.Errorf("%w: %s %q starts with '.'", ErrInvalidName, what, v)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("._+~@-", c) >= 0:
		default:
			return fmt.Errorf("%w: %s %q contains %q", ErrInvalidName, what, v, c)
		}
	}
	return nil
}

func notExist(err error) bool { return errors.Is(err, os.ErrNotExist) }

// MkdirInRoot creates root/elem... one level at a time and refuses a level
// that is a symlink or not a directory, so that a symlink planted inside the
// store (images/<distro> -> /etc) cannot make it write outside its root.
// The root itself may be a symlink.
func (s *Store) MkdirInRoot(elem ...string) (string, error) {
	p := s.root
	for _, e := range elem {
		p = filepath.Join(p, e)
		fi, err := os.Lstat(p)
		if notExist(err) {
			if err = os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return "", err
			}
			fi, err = os.Lstat(p)
		}
		if err != nil {
			return "", err
		}
		if !fi.IsDir() {
			return "", fmt.Errorf("%w: %s is a %s, not a directory", ErrInvalidName, p, fileKind(fi.Mode()))
		}
	}
	return p, nil
}

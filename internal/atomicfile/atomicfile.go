// Package atomicfile publishes files so that a reader, or the disk after a
// crash, sees either what was at the path before or the complete new file,
// never part of one: the bytes go to a temporary name in the destination's
// directory, are fsynced, renamed over the destination, and the directory is
// fsynced so that the rename itself survives a crash. "fsync" is Sync, which
// on macOS is F_FULLFSYNC: its fsync leaves the data in the drive's cache.
//
// The content store, the download engine's sidecars, the kernel unpacker and
// the qcow2 converter all publish this way; this is the one implementation.
// It is internal: its users are vmprep's own packages, and the content
// store's public WriteAtomic is its face for producers outside the module.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// TempMarker is part of every temporary name this package creates
// (".<base>.tmp-<random>"), so that a sweeper can tell a crash's leftovers
// from published files.
const TempMarker = ".tmp-"

// IsTemp reports whether the base name name is a temporary name of this
// package.
func IsTemp(name string) bool { return strings.Contains(name, TempMarker) }

// TempPrefix is how the temporary names of a file named base begin, so that
// the leftovers of a writer of that file can be found.
func TempPrefix(base string) string { return "." + base + TempMarker }

// Write publishes path. write is called with a new temporary file in path's
// directory; if it succeeds the file is chmodded to perm, fsynced, closed,
// renamed to path and the directory fsynced. If write or any step before the
// rename fails, the temporary file is removed and path is untouched. write's
// own error is returned as it is (it knows what it was doing); the others
// name path and the step.
//
// A failure of the final directory fsync is the one error after which the
// new file is already in place: the error says so.
func Write(path string, perm os.FileMode, write func(f *os.File) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, TempPrefix(base)+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = write(f); err != nil {
		return err
	}
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = Sync(f); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if serr := SyncDir(dir); serr != nil {
		// Not err: the temporary name is gone, there is nothing to remove.
		return fmt.Errorf("write %s: the file is in place, but the rename may not survive a crash: %w", path, serr)
	}
	return nil
}

// WriteFile publishes data at path with Write.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return Write(path, perm, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// Symlink makes link a symbolic link to target, replacing whatever link was
// (a symlink is created at a temporary name and renamed over it), and fsyncs
// link's directory. Readers of link see the old target or the new one.
func Symlink(target, link string) error {
	dir, base := filepath.Split(link)
	if dir == "" {
		dir = "."
	}
	tmp, err := symlinkTemp(target, dir, base)
	if err != nil {
		return fmt.Errorf("link %s: %w", link, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("link %s: %w", link, err)
	}
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("link %s: the link is in place, but the rename may not survive a crash: %w", link, err)
	}
	return nil
}

// symlinkTemp creates a symlink to target at a fresh temporary name in dir
// (os.CreateTemp makes only regular files).
func symlinkTemp(target, dir, base string) (string, error) {
	for range 10 {
		var r [8]byte
		_, _ = rand.Read(r[:])
		tmp := filepath.Join(dir, TempPrefix(base)+hex.EncodeToString(r[:]))
		err := os.Symlink(target, tmp)
		if err == nil {
			return tmp, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("no free temporary name in %s", dir)
}

// SyncDir fsyncs the directory dir, which makes the creations, renames and
// removals in it durable.
func SyncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil // directories cannot be fsynced there; renames are journalled
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync directory: %w", err)
	}
	defer d.Close()
	if err := Sync(d); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// TempName returns a fresh temporary name for path in path's directory,
// without creating it, for producers that must create the file themselves
// (clonefile(2) creates its destination). A name taken meanwhile makes
// their exclusive create fail; they ask again.
func TempName(path string) string {
	dir, base := filepath.Split(path)
	var r [8]byte
	_, _ = rand.Read(r[:])
	return filepath.Join(dir, TempPrefix(base)+hex.EncodeToString(r[:]))
}

// ErrExists is returned by Publish when path exists and replace is false.
var ErrExists = errors.New("exists")

// Publish completes what a producer wrote at tmp (a name in path's
// directory, such as TempName's): it chmods tmp to perm, fsyncs it, moves it
// to path and fsyncs the directory. With replace false an existing path is
// never overwritten, even by a racing writer: tmp is hard-linked to path (a
// link fails if path exists) and then removed; where the file system has no
// hard links it falls back to a check and a rename. On any failure before
// the move tmp is removed.
func Publish(tmp, path string, perm os.FileMode, replace bool) (err error) {
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	// Read-only is enough to chmod and fsync, and works on a clone that
	// clonefile(2) made with its read-only source's mode.
	f, err := os.Open(tmp)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Chmod(perm); err == nil {
		if err = Sync(f); err != nil {
			err = fmt.Errorf("fsync: %w", err)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if replace {
		err = os.Rename(tmp, path)
	} else {
		err = os.Link(tmp, path)
		switch {
		case errors.Is(err, os.ErrExist):
			return fmt.Errorf("write %s: %w", path, ErrExists)
		case err != nil:
			// No hard links here (a FAT or SMB mount): check, then rename.
			if _, serr := os.Lstat(path); serr == nil {
				return fmt.Errorf("write %s: %w", path, ErrExists)
			}
			err = os.Rename(tmp, path)
		default:
			err = os.Remove(tmp)
		}
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if serr := SyncDir(dir); serr != nil {
		return fmt.Errorf("write %s: the file is in place, but the rename may not survive a crash: %w", path, serr)
	}
	return nil
}

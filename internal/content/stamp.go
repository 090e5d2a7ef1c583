package content

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
)

// stamp is what os.Stat said about a file right after the store verified and
// published it. If a later stat still agrees, the content is taken as
// unchanged without reading it: any write through the file system changes
// mtime and ctime, and replacing the file changes the inode.
type stamp struct {
	Size         int64  `json:"size"`
	ModTimeNs    int64  `json:"mtime_ns"`
	ChangeTimeNs int64  `json:"ctime_ns,omitempty"`
	Inode        uint64 `json:"ino,omitempty"`
	Device       uint64 `json:"dev,omitempty"`
	// SHA256 is the hex digest of a blob's content (its name).
	SHA256 string `json:"sha256,omitempty"`
	// SparseSHA256 is the sparse digest of a derived file (see sparseHash).
	SparseSHA256 string    `json:"sparse_sha256,omitempty"`
	CommittedAt  time.Time `json:"committed_at"`
}

// maxStampBytes caps reads of stamp files; real ones are ~200 bytes.
const maxStampBytes = 4 << 10

func statStamp(fi os.FileInfo) stamp {
	st := stamp{Size: fi.Size(), ModTimeNs: fi.ModTime().UnixNano()}
	platformStamp(fi, &st)
	return st
}

// sameFile compares the stat-derived fields (not the digest or time). The
// device number is recorded but not compared: it may change across reboots
// (device-mapper, some network file systems) and would make every lookup
// after a reboot re-hash, while inode and ctime already change with any
// replacement or write.
func (a stamp) sameFile(b stamp) bool {
	return a.Size == b.Size && a.ModTimeNs == b.ModTimeNs && a.ChangeTimeNs == b.ChangeTimeNs &&
		a.Inode == b.Inode
}

func readStamp(path string) (stamp, error) {
	b, err := ReadCapped(path, maxStampBytes)
	if err != nil {
		return stamp{}, err
	}
	var st stamp
	if err := json.Unmarshal(b, &st); err != nil {
		return stamp{}, fmt.Errorf("stamp %s: %w", path, err)
	}
	return st, nil
}

func writeStamp(path string, st stamp) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o644)
}

// stampMatches reports whether the file at path (already Lstat-ed as fi) still
// matches the stamp stored at stampPath.
func stampMatches(stampPath string, fi os.FileInfo) (stamp, bool) {
	st, err := readStamp(stampPath)
	if err != nil {
		return stamp{}, false
	}
	return st, st.sameFile(statStamp(fi))
}

package content

import (
	"encoding/json"
	"io"
	"os"
	"strings"

	"github.com/vmprep/vmprep/pkg/digest"
)

// maxNoteSize bounds how much of a quarantine note is read: a few hundred bytes.
const maxNoteSize = 64 << 10

// Quarantined reports the newest quarantined copy of the blob d (SHA-256 as
// Lookup records it; a digest of another algorithm matches only if the note
// names it), as the *QuarantinedError Lookup returned when it moved it. A
// caller about to fetch d says with it that the cached copy was corrupt:
// the fetch is a repair, not a first download, and if it fails the person
// should know what happened to the copy they had.
func (s *Store) Quarantined(d digest.Digest) (*QuarantinedError, bool) {
	ents, err := os.ReadDir(s.path(dirQuarantine))
	if err != nil {
		return nil, false
	}
	want := d.String()
	var newest *QuarantinedError
	var newestAt string
	for _, de := range ents {
		name := de.Name()
		if !strings.HasSuffix(name, ".note.json") || !de.Type().IsRegular() {
			continue
		}
		f, err := os.Open(s.path(dirQuarantine, name))
		if err != nil {
			continue
		}
		var note quarantineNote
		err = json.NewDecoder(io.LimitReader(f, maxNoteSize)).Decode(&note)
		_ = f.Close()
		if err != nil || note.Expected != want {
			continue
		}
		// Names start with the time they were quarantined: the greatest is the newest.
		if newest == nil || name > newestAt {
			newestAt = name
			newest = &QuarantinedError{What: "blob " + want, Reason: note.Reason, To: s.path(dirQuarantine, strings.TrimSuffix(name, ".note.json"))}
		}
	}
	return newest, newest != nil
}

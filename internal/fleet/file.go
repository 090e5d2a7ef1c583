package fleet

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"go.yaml.in/yaml/v3"
)

// maxFileSize bounds a selections file: thousands of selections fit.
const maxFileSize = 4 << 20

// fileEntry is one selection as a file spells it; Keep is a pointer so
// that "keep: 0" (only the current build) differs from no keep.
type fileEntry struct {
	Selection `yaml:",inline"`
	Keep      *int `yaml:"keep"`
}

// ParseFile reads a YAML list of selections (the fields of Selection, in
// snake case), each normalized. Unknown fields and two entries naming the
// same selection (same image, format and hosts) are errors.
func ParseFile(r io.Reader) ([]Selection, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%w: file is larger than %d bytes", ErrInvalid, maxFileSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var entries []fileEntry
	if err := dec.Decode(&entries); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	seen := map[string]int{}
	out := make([]Selection, 0, len(entries))
	for i, e := range entries {
		sel := e.Selection
		if e.Keep != nil {
			sel.Keep = *e.Keep
		}
		sel, err := sel.Normalize(e.Keep != nil)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		if j, dup := seen[sel.ID()]; dup {
			return nil, fmt.Errorf("%w: entries %d and %d name the same selection (%s)", ErrInvalid, j, i+1, sel)
		}
		seen[sel.ID()] = i + 1
		out = append(out, sel)
	}
	return out, nil
}

// Diff is what makes have into want: the selections to write (new or
// changed) and those to remove (not named by want).
func Diff(have, want []Selection) (put, remove []Selection) {
	had := make(map[string]Selection, len(have))
	for _, s := range have {
		had[s.ID()] = s
	}
	wanted := make(map[string]bool, len(want))
	for _, s := range want {
		wanted[s.ID()] = true
		if old, ok := had[s.ID()]; !ok || old != s {
			put = append(put, s)
		}
	}
	for _, s := range have {
		if !wanted[s.ID()] {
			remove = append(remove, s)
		}
	}
	return put, remove
}

package fleet

import (
	"fmt"
	"slices"

	"github.com/vmprep/vmprep/pkg/image"
)

// Retain decides which builds of a selection a host keeps once it holds
// current: of the builds it held before, the keep newest by serial, and
// any other a pin names (pinned); the others it frees, unless something
// else on the host still uses them (a clone: the store's uses decide that,
// not this). After a rollback the newer build counts among those kept.
func Retain(current string, previous []string, keep int, pinned func(serial string) bool) (kept []Kept, free []string) {
	previous = slices.Clone(previous)
	slices.SortFunc(previous, func(a, b string) int { return image.CompareNatural(b, a) })
	seen := map[string]bool{current: true}
	n := 0
	for _, s := range previous {
		if s == "" || seen[s] {
			continue
		}
		seen[s] = true
		switch {
		case n < keep:
			n++
			kept = append(kept, Kept{Serial: s, Why: fmt.Sprintf("previous build %d of %d kept (keep %d)", n, keep, keep)})
		case pinned != nil && pinned(s):
			kept = append(kept, Kept{Serial: s, Why: "a selection pins it"})
		default:
			free = append(free, s)
		}
	}
	return kept, free
}

// Previous is what a host held for a selection before: the build it held
// and the builds it kept.
func (s Status) Previous() []string {
	out := []string{s.Held}
	for _, k := range s.Kept {
		out = append(out, k.Serial)
	}
	return slices.DeleteFunc(out, func(v string) bool { return v == "" })
}

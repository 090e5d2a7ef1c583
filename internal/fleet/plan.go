package fleet

import (
	"slices"
	"strings"
)

// Fleet is the whole declared and reported state: the input of Plans.
type Fleet struct {
	Selections []Selection
	// Builds by selection ID: what the sync found for following selections.
	Builds map[string]Build
	// Hosts known to the deployment (each announced itself).
	Hosts []string
	// Plans are the plans given before, by host.
	Plans map[string]Plan
	// Status by host, then selection ID.
	Status map[string]map[string]Status
}

// Plans decides every host's plan and each selection's rollout progress
// (by selection ID): see Rollout.
func Plans(f Fleet) (map[string]Plan, map[string]Progress) {
	plans := make(map[string]Plan, len(f.Hosts))
	for _, h := range f.Hosts {
		plans[h] = Plan{Host: h}
	}
	progress := make(map[string]Progress, len(f.Selections))
	sels := slices.Clone(f.Selections)
	slices.SortFunc(sels, func(a, b Selection) int { return strings.Compare(a.ID(), b.ID()) })
	for _, sel := range sels {
		id := sel.ID()
		var hosts []string
		assigned := map[string]string{}
		status := map[string]Status{}
		for _, h := range f.Hosts {
			if !sel.Matches(h) {
				continue
			}
			hosts = append(hosts, h)
			if s, ok := f.Plans[h].Assigned(id); ok {
				assigned[h] = s
			}
			status[h] = f.Status[h][id]
		}
		next, prog := Rollout(sel, Target(sel, f.Builds[id]), hosts, assigned, status)
		progress[id] = prog
		for _, h := range hosts {
			serial := next[h]
			if serial == "" {
				continue
			}
			p := plans[h]
			spec := sel.Spec()
			spec.Serial = serial
			p.Desired = append(p.Desired, Desired{Selection: id, Spec: spec, Format: sel.Format, Keep: sel.Keep})
			plans[h] = p
		}
	}
	// A pinned serial is never freed on a host holding that image.
	for h, p := range plans {
		for _, sel := range sels {
			if !sel.Pinned() {
				continue
			}
			pin := sel.Spec()
			pin.Serial = sel.Serial
			for _, d := range p.Desired {
				same := d.Spec
				same.Serial = pin.Serial
				if same == pin && !slices.Contains(p.Pinned, pin) {
					p.Pinned = append(p.Pinned, pin)
				}
			}
		}
		plans[h] = p
	}
	return plans, progress
}

// Equal reports whether two plans say the same.
func (p Plan) Equal(q Plan) bool {
	return p.Host == q.Host && slices.Equal(p.Desired, q.Desired) && slices.Equal(p.Pinned, q.Pinned)
}

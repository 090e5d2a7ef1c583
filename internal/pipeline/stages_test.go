package pipeline_test

import (
	"slices"
	"testing"

	"github.com/vmprep/vmprep/internal/pipeline"
)

// serve's stage names mean what the binaries run: the resolver binary runs
// the collector too, so "resolver" does; a list without a collector would
// take requests and never answer.
func TestParseStagesMeanTheBinaries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"resolver,verifier,converter", []string{"resolver", "verifier", "converter", "collector"}},
		{"resolver", []string{"resolver", "collector"}},
		{"resolver,collector", []string{"resolver", "collector"}},
		{"fetcher", []string{"fetcher"}},
		{"collector", []string{"collector"}},
		{"none", nil},
		{"all", pipeline.AllStages},
	} {
		got, err := pipeline.ParseStages(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseStages(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

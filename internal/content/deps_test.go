package content

import (
	"os/exec"
	"strings"
	"testing"
)

// TestContentStoreKnowsNoImages: the content store stores bytes by digest;
// catalogs, signatures, qcow2 and the records layer above it, and the
// OpenPGP and YAML they pull in, are not its business (issue 19).
func TestContentStoreKnowsNoImages(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list dependencies: %v", err)
	}
	out, err := exec.Command(goCmd, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "github.com/vmprep/vmprep/internal/content").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"github.com/ProtonMail/go-crypto",
		"go.yaml.in/yaml",
		"github.com/nats-io/",
		"github.com/vmprep/vmprep/pkg/catalog",
		"github.com/vmprep/vmprep/pkg/signature",
		"github.com/vmprep/vmprep/internal/qcow2",
		"github.com/vmprep/vmprep/internal/store",
	}
	deps := strings.Fields(string(out))
	for _, d := range deps {
		for _, f := range forbidden {
			if strings.HasPrefix(d, f) {
				t.Errorf("internal/content depends on %s", d)
			}
		}
	}
	t.Logf("%d non-standard packages: %s", len(deps), strings.Join(deps, " "))
}

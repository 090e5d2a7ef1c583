package client_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependenciesStaySmall: what a backend imports to talk to vmprep — the
// client and the wire types — must not drag in the server side: no
// nats-server, no OpenPGP, no qcow2 reader, no content store or download
// engine, and few packages in all.
func TestDependenciesStaySmall(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list dependencies: %v", err)
	}
	const maxNonStd = 50
	forbidden := []string{
		"github.com/nats-io/nats-server",
		"github.com/ProtonMail/go-crypto",
		"github.com/vmprep/vmprep/internal/qcow2",
		"github.com/vmprep/vmprep/internal/store",
		"github.com/vmprep/vmprep/internal/download",
		"github.com/vmprep/vmprep/pkg/catalog",
		"github.com/vmprep/vmprep/pkg/signature",
		"github.com/vmprep/vmprep/internal/",
	}
	for _, pkg := range []string{"github.com/vmprep/vmprep/pkg/client", "github.com/vmprep/vmprep/pkg/messages"} {
		t.Run(pkg[strings.LastIndex(pkg, "/")+1:], func(t *testing.T) {
			out, err := exec.Command(goCmd, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", pkg, err)
			}
			deps := strings.Fields(string(out))
			if len(deps) > maxNonStd {
				t.Errorf("%s depends on %d non-standard packages, want at most %d:\n%s", pkg, len(deps), maxNonStd, strings.Join(deps, "\n"))
			}
			for _, d := range deps {
				for _, f := range forbidden {
					if strings.HasPrefix(d, f) {
						t.Errorf("%s depends on %s", pkg, d)
					}
				}
			}
			t.Logf("%s: %d non-standard packages", pkg, len(deps))
		})
	}
}

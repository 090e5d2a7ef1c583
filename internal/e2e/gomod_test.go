package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// goLine reads the `go` directive of a go.mod file.
func goLine(t *testing.T, gomod string) string {
	t.Helper()
	data, err := os.ReadFile(gomod)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go ([0-9.]+)\s*$`).FindSubmatch(data)
	if m == nil {
		t.Fatalf("%s has no go directive", gomod)
	}
	return string(m[1])
}

// TestClientDoesNotRaiseCallersGoVersion: a backend on an older go line that
// imports only pkg/client is raised to no newer a go version than the
// packages it then builds need. go.mod once declared the toolchain's patch
// release (go 1.26.8), and `go mod tidy` spread that to every caller.
func TestClientDoesNotRaiseCallersGoVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go mod tidy")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	ours := goLine(t, filepath.Join(root, "go.mod"))

	// The newest go line among the other modules pkg/client and
	// pkg/embedded build from: nothing can declare less than that.
	list := exec.Command("go", "list", "-deps", "-f", `{{with .Module}}{{if ne .Path "github.com/vmprep/vmprep"}}{{.GoVersion}}{{end}}{{end}}`, "./pkg/client", "./pkg/embedded")
	list.Dir = root
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := "1.0"
	for _, v := range strings.Fields(string(out)) {
		if newerGo(v, deps) {
			deps = v
		}
	}
	if newerGo(ours, deps) {
		t.Errorf("go.mod declares go %s, but the dependencies of pkg/client and pkg/embedded need only go %s: declare that and keep the build's version in a toolchain line", ours, deps)
	}

	// A caller's module on an older go line, importing pkg/client, tidied.
	dir := t.TempDir()
	gomod := "module example.com/backend\n\ngo 1.24\n\nrequire github.com/vmprep/vmprep v0.0.0\n\nreplace github.com/vmprep/vmprep => " + root + "\n"
	main := "package main\n\nimport _ \"github.com/vmprep/vmprep/pkg/client\"\n\nfunc main() {}\n"
	for name, data := range map[string]string{"go.mod": gomod, "main.go": main} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tidy := exec.Command("go", "mod", "tidy")
	tidy.Dir = dir
	tidy.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")
	if out, err := tidy.CombinedOutput(); err != nil {
		t.Fatalf("go mod tidy in a caller's module: %v\n%s", err, out)
	}
	if got := goLine(t, filepath.Join(dir, "go.mod")); newerGo(got, deps) {
		t.Errorf("a caller on go 1.24 importing pkg/client was raised to go %s; its dependencies need only go %s", got, deps)
	}
}

// newerGo reports whether go version a (1.N or 1.N.P) is newer than b.
func newerGo(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < 3; i++ {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			return x > y
		}
	}
	return false
}

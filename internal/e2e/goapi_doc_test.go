package e2e

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestGoAPIDocNamesRealIdentifiers: every `pkg.Name` docs/go-api.md shows a
// caller exists in that package. The page once told callers to test for
// messages.ErrInvalid, which does not exist (messages.ErrInvalidRequest does).
func TestGoAPIDocNamesRealIdentifiers(t *testing.T) {
	root := filepath.Join("..", "..")
	doc, err := os.ReadFile(filepath.Join(root, "docs", "go-api.md"))
	if err != nil {
		t.Fatal(err)
	}
	pkgs := map[string]string{
		"client": "pkg/client", "embedded": "pkg/embedded", "messages": "pkg/messages",
		"image": "pkg/image", "catalog": "pkg/catalog",
	}
	exported := map[string]map[string]bool{}
	for name, dir := range pkgs {
		exported[name] = exportedNames(t, filepath.Join(root, dir))
	}
	var missing []string
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`\b(client|embedded|messages|image|catalog)\.([A-Z][A-Za-z0-9_]*)`).FindAllSubmatch(doc, -1) {
		pkg, ident := string(m[1]), string(m[2])
		if seen[pkg+"."+ident] {
			continue
		}
		seen[pkg+"."+ident] = true
		if !exported[pkg][ident] {
			missing = append(missing, pkg+"."+ident)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("docs/go-api.md names identifiers its packages do not export: %s", strings.Join(missing, ", "))
	}
	if len(seen) < 10 {
		t.Errorf("found only %d package identifiers in docs/go-api.md: is the pattern right?", len(seen))
	}
}

// exportedNames lists a package's exported top-level names and the
// exported fields and methods of its types (as Type.Name and Name).
func exportedNames(t *testing.T, dir string) map[string]bool {
	t.Helper()
	fset := token.NewFileSet()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	names := map[string]bool{}
	for _, f := range files {
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil {
					names[d.Name.Name] = true
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						names[s.Name.Name] = true
					case *ast.ValueSpec:
						for _, n := range s.Names {
							names[n.Name] = true
						}
					}
				}
			}
		}
	}
	return names
}

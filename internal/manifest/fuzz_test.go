package manifest

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse checks that no input panics Parse and that whatever it accepts
// is self-consistent: every entry has a clean non-empty name that Lookup
// finds, and writing the entries back out as coreutils lines parses to the
// same entries.
func FuzzParse(f *testing.F) {
	seeds := []string{
		lines(sum256("a")+" *ubuntu-24.04-server-cloudimg-amd64.img", sum256("k")+" *unpacked/vmlinuz"),
		lines(sum512("d") + "  debian-12-genericcloud-amd64.qcow2"),
		lines("# Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2: 494600192 bytes", "SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2) = "+sum256("f")),
		lines("SHA512 (FreeBSD-14.1-RELEASE-amd64-ufs.qcow2.xz) = " + sum512("u")),
		lines(sum256("s") + " openSUSE-Leap-15.6-Minimal-VM.x86_64-Cloud-Build1.2.qcow2"),
		sum512("alpine"),
		"SHA256(a.img)= " + sum256("a") + "\r\nSHA2-256 (b) = " + b64(sum256("b")) + "\r\n",
		lines(`\`+sum256("e")+`  a\\b\nc`, `\SHA256 (x\ry) = `+sum256("x")),
		lines("SHA256 (weird (1) = 2.img) = "+sum256("w"), sumMD5("m")+"  m.img", "SHA1 (s) = "+sumSHA1("s")),
		lines(sum256("a")+"  ./a.img", sum256("a")+"  a.img", sum256("b")+"  a.img"),
		"\xef\xbb\xbf" + sum256("a") + "  my disk.img",
		lines(strings.Repeat("ab", 48)+"  x", sum256("a")+"  "),
	}
	for _, s := range seeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, single bool) {
		var opts []Option
		if single {
			opts = append(opts, WithSingleFile("image.qcow2"))
		}
		m, err := Parse(bytes.NewReader(data), opts...)
		if err != nil {
			if m != nil {
				t.Fatalf("Parse returned a manifest and error %v", err)
			}
			return
		}
		entries := m.Entries()
		if len(entries) == 0 {
			t.Fatal("Parse succeeded with no entries")
		}
		var out strings.Builder
		for _, e := range entries {
			if e.Name == "" || strings.HasPrefix(e.Name, "./") {
				t.Fatalf("entry name %q is empty or not clean", e.Name)
			}
			if e.Digest.Algorithm.HexLen() != len(e.Digest.Hex) || strings.ToLower(e.Digest.Hex) != e.Digest.Hex {
				t.Fatalf("entry %q has malformed digest %v", e.Name, e.Digest)
			}
			d, err := m.Lookup(e.Name)
			if err != nil {
				t.Fatalf("Lookup(%q) of a listed entry: %v", e.Name, err)
			}
			if d.Algorithm.HexLen() < e.Digest.Algorithm.HexLen() {
				t.Fatalf("Lookup(%q) = %v, weaker than listed %v", e.Name, d, e.Digest)
			}
			out.WriteString(formatLine(e))
		}
		if single {
			if len(entries) != 1 || entries[0].Name != "image.qcow2" {
				t.Fatalf("single-file parse gave %v", entries)
			}
			return
		}
		again, err := Parse(strings.NewReader(out.String()))
		if err != nil {
			t.Fatalf("re-parsing %q: %v", out.String(), err)
		}
		if !reflect.DeepEqual(again.Entries(), entries) {
			t.Fatalf("round trip changed entries:\n%v\n%v", entries, again.Entries())
		}
	})
}

// formatLine writes an entry as sha256sum would, escaping the name the way
// coreutils does.
func formatLine(e Entry) string {
	if strings.ContainsAny(e.Name, "\\\n\r") {
		r := strings.NewReplacer(`\`, `\\`, "\n", `\n`, "\r", `\r`)
		return fmt.Sprintf("\\%s  %s\n", e.Digest.Hex, r.Replace(e.Name))
	}
	return fmt.Sprintf("%s  %s\n", e.Digest.Hex, e.Name)
}

// BenchmarkParse measures parsing alone on a 100k-line SHA256SUMS.
func BenchmarkParse(b *testing.B) {
	var buf bytes.Buffer
	for i := range 100_000 {
		name := fmt.Sprintf("images/build-%06d/disk.qcow2", i)
		fmt.Fprintf(&buf, "%s *%s\n", sum256(name), name)
	}
	data := buf.Bytes()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}

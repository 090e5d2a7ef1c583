package manifest

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/pkg/digest"
)

// Digests of made-up contents stand in for the real ones: the parser only
// cares about their shape, and computing them keeps expectations honest.
func sum256(s string) string  { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
func sum512(s string) string  { h := sha512.Sum512([]byte(s)); return hex.EncodeToString(h[:]) }
func sumMD5(s string) string  { h := md5.Sum([]byte(s)); return hex.EncodeToString(h[:]) }
func sumSHA1(s string) string { h := sha1.Sum([]byte(s)); return hex.EncodeToString(h[:]) }

func e256(name, content string) Entry {
	return Entry{Name: name, Digest: digest.Digest{Algorithm: digest.SHA256, Hex: sum256(content)}}
}

func e512(name, content string) Entry {
	return Entry{Name: name, Digest: digest.Digest{Algorithm: digest.SHA512, Hex: sum512(content)}}
}

func lines(ls ...string) string { return strings.Join(ls, "\n") + "\n" }

func TestParseFormats(t *testing.T) {
	const (
		ubuntuImg   = "ubuntu-24.04-server-cloudimg-amd64.img"
		ubuntuArm   = "ubuntu-24.04-server-cloudimg-arm64.img"
		ubuntuTar   = "ubuntu-24.04-server-cloudimg-amd64.tar.gz"
		debianQcow  = "debian-12-genericcloud-amd64.qcow2"
		debianRaw   = "debian-12-genericcloud-amd64.raw"
		fedoraQcow  = "Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2"
		fedoraRaw   = "Fedora-Cloud-Base-Generic-41-1.4.x86_64.raw.xz"
		freebsdUFS  = "FreeBSD-14.1-RELEASE-amd64-ufs.qcow2.xz"
		freebsdZFS  = "FreeBSD-14.1-RELEASE-amd64-zfs.qcow2.xz"
		suseBuild   = "openSUSE-Leap-15.6-Minimal-VM.x86_64-Cloud-Build1.2.qcow2"
		suseAlias   = "openSUSE-Leap-15.6-Minimal-VM.x86_64-Cloud.qcow2"
		almaLatest  = "AlmaLinux-9-GenericCloud-latest.x86_64.qcow2"
		almaVersion = "AlmaLinux-9-GenericCloud-9.4-20240507.x86_64.qcow2"
		rockyQcow   = "Rocky-9-GenericCloud-Base-9.4-20240609.1.x86_64.qcow2"
		alpineQcow  = "nocloud_alpine-3.20.3-x86_64-uefi-cloudinit-r0.qcow2"
		archQcow    = "Arch-Linux-x86_64-cloudimg.qcow2"
	)
	tests := []struct {
		name string
		in   string
		opts []Option
		want []Entry
	}{
		{
			name: "Ubuntu SHA256SUMS, binary mode",
			in: lines(
				sum256("img")+" *"+ubuntuImg,
				sum256("tar")+" *"+ubuntuTar,
				sum256("arm")+" *"+ubuntuArm,
			),
			want: []Entry{e256(ubuntuImg, "img"), e256(ubuntuTar, "tar"), e256(ubuntuArm, "arm")},
		},
		{
			name: "Ubuntu unpacked/SHA256SUMS keeps folders",
			in: lines(
				sum256("k")+" *unpacked/ubuntu-24.04-server-cloudimg-amd64-vmlinuz-generic",
				sum256("i")+" *unpacked/ubuntu-24.04-server-cloudimg-amd64-initrd-generic",
			),
			want: []Entry{
				e256("unpacked/ubuntu-24.04-server-cloudimg-amd64-vmlinuz-generic", "k"),
				e256("unpacked/ubuntu-24.04-server-cloudimg-amd64-initrd-generic", "i"),
			},
		},
		{
			name: "Debian SHA512SUMS, text mode",
			in: lines(
				sum512("qcow")+"  "+debianQcow,
				sum512("raw")+"  "+debianRaw,
			),
			want: []Entry{e512(debianQcow, "qcow"), e512(debianRaw, "raw")},
		},
		{
			name: "Fedora CHECKSUM with size comments",
			in: lines(
				"# "+fedoraQcow+": 494600192 bytes",
				"SHA256 ("+fedoraQcow+") = "+sum256("fq"),
				"# "+fedoraRaw+": 437219880 bytes",
				"SHA256 ("+fedoraRaw+") = "+sum256("fr"),
			),
			want: []Entry{e256(fedoraQcow, "fq"), e256(fedoraRaw, "fr")},
		},
		{
			name: "FreeBSD CHECKSUM.SHA256 BSD tags",
			in: lines(
				"SHA256 ("+freebsdUFS+") = "+sum256("ufs"),
				"SHA256 ("+freebsdZFS+") = "+sum256("zfs"),
			),
			want: []Entry{e256(freebsdUFS, "ufs"), e256(freebsdZFS, "zfs")},
		},
		{
			name: "FreeBSD CHECKSUM.SHA512 BSD tags",
			in:   lines("SHA512 (" + freebsdUFS + ") = " + sum512("ufs")),
			want: []Entry{e512(freebsdUFS, "ufs")},
		},
		{
			name: "openSUSE single space",
			in:   lines(sum256("suse") + " " + suseBuild),
			want: []Entry{e256(suseBuild, "suse")},
		},
		{
			name: "openSUSE per-file checksum bound to the alias",
			in:   lines(sum256("suse") + "  " + suseBuild),
			opts: []Option{WithSingleFile(suseAlias)},
			want: []Entry{e256(suseAlias, "suse")},
		},
		{
			name: "Alpine per-file bare SHA-512",
			in:   lines(sum512("alpine")),
			opts: []Option{WithSingleFile(alpineQcow)},
			want: []Entry{e512(alpineQcow, "alpine")},
		},
		{
			name: "per-file bare digest without newline",
			in:   sum256("arch"),
			opts: []Option{WithSingleFile(archQcow)},
			want: []Entry{e256(archQcow, "arch")},
		},
		{
			name: "AlmaLinux CHECKSUM, text mode with comments",
			in: lines(
				"# AlmaLinux 9 GenericCloud images",
				sum256("latest")+"  "+almaLatest,
				sum256("ver")+"  "+almaVersion,
			),
			want: []Entry{e256(almaLatest, "latest"), e256(almaVersion, "ver")},
		},
		{
			name: "Rocky CHECKSUM with a duplicated line",
			in: lines(
				"# "+rockyQcow+": 609812480 bytes",
				"SHA256 ("+rockyQcow+") = "+sum256("rocky"),
				"# "+rockyQcow+": 609812480 bytes",
				"SHA256 ("+rockyQcow+") = "+sum256("rocky"),
			),
			want: []Entry{e256(rockyQcow, "rocky")},
		},
		{
			name: "OpenSSL tags",
			in: lines(
				"SHA256(a.img)= "+sum256("a"),
				"SHA2-256(b.img)= "+sum256("b"),
				"SHA2-512(c.img)= "+sum512("c"),
				"sha256 (d.img) = "+sum256("d"),
			),
			want: []Entry{e256("a.img", "a"), e256("b.img", "b"), e512("c.img", "c"), e256("d.img", "d")},
		},
		{
			name: "BSD tag with base64 digest",
			in:   lines("SHA256 (a.img) = " + b64(sum256("a"))),
			want: []Entry{e256("a.img", "a")},
		},
		{
			name: "names with spaces are kept whole",
			in: lines(
				sum256("1")+"  my image.qcow2",
				sum256("2")+" *two  spaces  ",
				sum256("3")+"   leading space",
				sum256("4")+" single space name.img",
				"SHA256 (bsd name with space.img) = "+sum256("5"),
			),
			want: []Entry{
				e256("my image.qcow2", "1"),
				e256("two  spaces  ", "2"),
				e256(" leading space", "3"),
				e256("single space name.img", "4"),
				e256("bsd name with space.img", "5"),
			},
		},
		{
			name: "BSD name with parentheses and ' = ' uses the last ')' before the digest",
			in:   lines("SHA256 (weird (1) = 2.img) = " + sum256("w")),
			want: []Entry{e256("weird (1) = 2.img", "w")},
		},
		{
			name: "escaped names",
			in: lines(
				`\`+sum256("1")+`  back\\slash`,
				`\`+sum256("2")+` *new\nline`,
				`\SHA256 (carriage\rreturn) = `+sum256("3"),
				sum256("4")+`  not\\escaped`,
			),
			want: []Entry{
				e256(`back\slash`, "1"),
				e256("new\nline", "2"),
				e256("carriage\rreturn", "3"),
				e256(`not\\escaped`, "4"),
			},
		},
		{
			name: "CRLF line endings",
			in:   sum256("a") + "  a.img\r\n" + "SHA256 (b.img) = " + sum256("b") + "\r\n",
			want: []Entry{e256("a.img", "a"), e256("b.img", "b")},
		},
		{
			name: "last line without newline is kept",
			in:   sum256("a") + "  a.img\n" + sum256("b") + "  b.img",
			want: []Entry{e256("a.img", "a"), e256("b.img", "b")},
		},
		{
			name: "./ prefix removed, blank lines and comments skipped",
			in:   "\n# comment\n   \n\t" + sum256("a") + "  ./a.img\n\n" + sum256("a") + "  a.img\n",
			want: []Entry{e256("a.img", "a")},
		},
		{
			name: "upper-case hex is normalised",
			in:   lines(strings.ToUpper(sum256("a")) + "  a.img"),
			want: []Entry{e256("a.img", "a")},
		},
		{
			name: "UTF-8 byte order mark",
			in:   "\xef\xbb\xbf" + lines(sum256("a")+"  a.img"),
			want: []Entry{e256("a.img", "a")},
		},
		{
			name: "weak lines beside strong ones are skipped",
			in: lines(
				sumMD5("a")+"  a.img",
				sum256("a")+"  a.img",
				"SHA1 (b.img) = "+sumSHA1("b"),
				"SHA512 (b.img) = "+sum512("b"),
			),
			want: []Entry{e256("a.img", "a"), e512("b.img", "b")},
		},
		{
			name: "one name with two algorithms keeps both",
			in:   lines(sum256("a")+"  a.img", sum512("a")+"  a.img"),
			want: []Entry{e256("a.img", "a"), e512("a.img", "a")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse(strings.NewReader(tt.in), tt.opts...)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := m.Entries(); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Entries() =\n%v\nwant\n%v", got, tt.want)
			}
			for _, e := range tt.want {
				d, err := m.Lookup(e.Name)
				if err != nil {
					t.Errorf("Lookup(%q): %v", e.Name, err)
					continue
				}
				// Where a name has two algorithms Lookup prefers SHA-512.
				if d != e.Digest && d.Algorithm != digest.SHA512 {
					t.Errorf("Lookup(%q) = %s, want %s", e.Name, d, e.Digest)
				}
			}
		})
	}
}

func b64(hexValue string) string {
	raw, err := hex.DecodeString(hexValue)
	if err != nil {
		panic(err)
	}
	return base64.StdEncoding.EncodeToString(raw)
}

func TestParseErrors(t *testing.T) {
	long := strings.Repeat("x", 5000)
	tests := []struct {
		name       string
		in         string
		opts       []Option
		wantErr    error // checked with errors.Is when set
		syntaxLine int   // when set, a *SyntaxError on this line is expected
	}{
		{name: "empty input", in: "", wantErr: ErrNoEntries},
		{name: "only comments and blanks", in: "# nothing\n\n  \n", wantErr: ErrNoEntries},
		{name: "MD5 only", in: lines(sumMD5("a") + "  a.img"), wantErr: ErrWeakAlgorithm},
		{name: "SHA-1 only", in: lines(sumSHA1("a") + "  a.img"), wantErr: ErrWeakAlgorithm},
		{name: "MD5 tag", in: lines("MD5 (a.img) = " + sumMD5("a")), wantErr: ErrWeakAlgorithm},
		{name: "SHA1 tag", in: lines("SHA1 (a.img) = " + sumSHA1("a")), wantErr: ErrWeakAlgorithm},
		{name: "per-file MD5", in: lines(sumMD5("a")), opts: []Option{WithSingleFile("a.img")}, wantErr: ErrWeakAlgorithm},
		{name: "SHA-384 only", in: lines(strings.Repeat("ab", 48) + "  a.img"), wantErr: digest.ErrUnsupportedAlgorithm},
		{name: "conflicting duplicates", in: lines(sum256("a")+"  a.img", sum256("b")+"  ./a.img"), wantErr: ErrConflict},
		{name: "conflict across formats", in: lines(sum256("a")+"  a.img", "SHA256 (a.img) = "+sum256("b")), wantErr: ErrConflict},
		{name: "too large", in: lines(sum256("a") + "  a.img"), opts: []Option{WithMaxSize(10)}, wantErr: ErrTooLarge},
		{name: "one-field line", in: lines(sum256("a")+"  a.img", sum256("b")), syntaxLine: 2},
		{name: "one-field line without newline", in: sum256("a") + "  a.img\n" + sum256("b"), syntaxLine: 2},
		{name: "empty name, text mode", in: lines(sum256("a") + "  "), syntaxLine: 1},
		{name: "empty name, binary mode", in: lines(sum256("a") + " *"), syntaxLine: 1},
		{name: "name is only ./", in: lines(sum256("a") + "  ./"), syntaxLine: 1},
		{name: "empty BSD name", in: lines("SHA256 () = " + sum256("a")), syntaxLine: 1},
		{name: "BSD without digest", in: lines("SHA256 (a.img) = "), syntaxLine: 1},
		{name: "BSD without =", in: lines("SHA256 (a.img) " + sum256("a")), syntaxLine: 1},
		{name: "BSD without (", in: lines("SHA256 a.img = " + sum256("a")), syntaxLine: 1},
		{name: "BSD tag and length disagree", in: lines("SHA256 (a.img) = " + sum512("a")), syntaxLine: 1},
		{name: "hex too short", in: lines(sum256("a")[:63] + "  a.img"), syntaxLine: 1},
		{name: "non-hex in digest field", in: lines(sum256("a")[:63] + "g  a.img"), syntaxLine: 1},
		{name: "invalid escape", in: lines(`\` + sum256("a") + `  a\tb`), syntaxLine: 1},
		{name: "escape ends in backslash", in: lines(`\` + sum256("a") + `  a\`), syntaxLine: 1},
		{name: "garbage on line 3", in: lines("# c", sum256("a")+"  a.img", "hello world"), syntaxLine: 3},
		{name: "clearsigned input not verified", in: lines("-----BEGIN PGP SIGNED MESSAGE-----", "Hash: SHA256", "", sum256("a")+"  a.img"), syntaxLine: 1},
		{name: "per-file with an empty name", in: lines(sum256("a")), opts: []Option{WithSingleFile("./")}},
		{name: "per-file with two digests", in: lines(sum256("a")+"  a.img", sum256("b")+"  b.img"), opts: []Option{WithSingleFile("a.img")}, syntaxLine: 2},
		{name: "hostile long line", in: lines(long), syntaxLine: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse(strings.NewReader(tt.in), tt.opts...)
			if err == nil {
				t.Fatalf("Parse succeeded with %v, want an error", m.Entries())
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Parse error = %v, want %v", err, tt.wantErr)
			}
			if tt.syntaxLine != 0 {
				var se *SyntaxError
				if !errors.As(err, &se) {
					t.Fatalf("Parse error = %v (%T), want *SyntaxError", err, err)
				}
				if se.Line != tt.syntaxLine {
					t.Errorf("SyntaxError.Line = %d, want %d (%v)", se.Line, tt.syntaxLine, err)
				}
				if se.Reason == "" || len(se.Text) > maxErrorText+len("…") {
					t.Errorf("SyntaxError reason %q, text of %d bytes", se.Reason, len(se.Text))
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("line %d", tt.syntaxLine)) {
					t.Errorf("error %q does not name line %d", err, tt.syntaxLine)
				}
			}
		})
	}
}

// TestConflictNamesBothLines checks the conflict error points at both lines.
func TestConflictNamesBothLines(t *testing.T) {
	in := lines("# header", sum256("a")+"  a.img", sum256("x")+"  b.img", sum256("b")+" *a.img")
	_, err := Parse(strings.NewReader(in))
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("Parse error = %v, want ErrConflict", err)
	}
	for _, want := range []string{"line 4", "line 2", `"a.img"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestLookup(t *testing.T) {
	in := lines(
		sum256("k")+" *unpacked/vmlinuz",
		sum256("d")+"  ./disk.img",
		sum256("r")+"  root.img",
		sumMD5("old")+"  old.img",
		strings.Repeat("cd", 48)+"  sha384.img",
		sum256("both")+"  both.img",
		sum512("both")+"  both.img",
	)
	m, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		want    string // digest text
		wantErr error
	}{
		{name: "unpacked/vmlinuz", want: "sha256:" + sum256("k")},
		{name: "./unpacked/vmlinuz", want: "sha256:" + sum256("k")},
		{name: "vmlinuz", wantErr: ErrEntryNotFound},           // basename never matches across folders
		{name: "other/vmlinuz", wantErr: ErrEntryNotFound},     // nor another folder
		{name: "disk.img", want: "sha256:" + sum256("d")},      // "./x" in the manifest
		{name: "./disk.img", want: "sha256:" + sum256("d")},    // "./x" on both sides
		{name: "./root.img", want: "sha256:" + sum256("r")},    // "./x" in the query
		{name: "unpacked/root.img", wantErr: ErrEntryNotFound}, // a folder the manifest doesn't have
		{name: "", wantErr: ErrEntryNotFound},
		{name: "./", wantErr: ErrEntryNotFound},
		{name: "ROOT.IMG", wantErr: ErrEntryNotFound}, // names are case-sensitive
		{name: "old.img", wantErr: ErrWeakAlgorithm},
		{name: "sha384.img", wantErr: digest.ErrUnsupportedAlgorithm},
		{name: "both.img", want: "sha512:" + sum512("both")},
	}
	for _, tt := range tests {
		d, err := m.Lookup(tt.name)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Lookup(%q) = %s, %v; want %v", tt.name, d, err, tt.wantErr)
			}
			continue
		}
		if err != nil || d.String() != tt.want {
			t.Errorf("Lookup(%q) = %s, %v; want %s", tt.name, d, err, tt.want)
		}
	}
}

// TestGoGetterBugs pins the three go-getter parser bugs the team notes warn about.
func TestGoGetterBugs(t *testing.T) {
	t.Run("a name with spaces is not cut at the first space", func(t *testing.T) {
		m, err := Parse(strings.NewReader(lines(sum256("a") + "  my disk.img")))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Lookup("my"); !errors.Is(err, ErrEntryNotFound) {
			t.Errorf(`Lookup("my") = %v, want ErrEntryNotFound`, err)
		}
		if _, err := m.Lookup("my disk.img"); err != nil {
			t.Errorf(`Lookup("my disk.img") = %v`, err)
		}
	})
	t.Run("a one-field line never yields an entry matching the empty name", func(t *testing.T) {
		m, err := Parse(strings.NewReader(lines(sum256("a")+"  a.img", sum256("b"))))
		if err == nil {
			_, lerr := m.Lookup("")
			t.Fatalf("Parse accepted a one-field line; Lookup(\"\") = %v", lerr)
		}
	})
	t.Run("the last line without a newline is not dropped", func(t *testing.T) {
		m, err := Parse(strings.NewReader(sum256("a") + "  a.img\n" + sum256("b") + "  b.img"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Lookup("b.img"); err != nil {
			t.Errorf(`Lookup("b.img") = %v`, err)
		}
	})
}

func TestSize(t *testing.T) {
	const name = "Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2"
	in := lines("# "+name+": 494600192 bytes", "SHA256 ("+name+") = "+sum256("f"), "# not a size: many bytes")
	m, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := m.Size("./" + name); !ok || n != 494600192 {
		t.Errorf("Size(%q) = %d, %v; want 494600192, true", name, n, ok)
	}
	if n, ok := m.Size("not a size"); ok {
		t.Errorf("Size of a malformed comment = %d, true", n)
	}
}

func TestWithMaxSize(t *testing.T) {
	in := lines(sum256("a") + "  a.img")
	for _, tt := range []struct {
		max     int64
		wantErr bool
	}{
		{int64(len(in)), false},
		{int64(len(in)) - 1, true},
		{0, false}, // zero keeps the default
	} {
		_, err := Parse(strings.NewReader(in), WithMaxSize(tt.max))
		if got := errors.Is(err, ErrTooLarge); got != tt.wantErr {
			t.Errorf("WithMaxSize(%d): error %v, want ErrTooLarge=%v", tt.max, err, tt.wantErr)
		}
	}
}

// TestEntriesIsACopy guards the manifest's immutability.
func TestEntriesIsACopy(t *testing.T) {
	m, err := Parse(strings.NewReader(lines(sum256("a") + "  a.img")))
	if err != nil {
		t.Fatal(err)
	}
	m.Entries()[0].Name = "changed"
	if got := m.Entries()[0].Name; got != "a.img" {
		t.Errorf("Entries()[0].Name = %q after modifying a returned copy", got)
	}
}

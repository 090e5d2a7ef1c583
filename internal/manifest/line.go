package manifest

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/vmprep/vmprep/pkg/digest"
)

// parseLine reads one non-blank, non-comment line with leading blanks
// removed. n and the line feed its errors.
func parseLine(line string, n int) (parsed, error) {
	if strings.HasPrefix(line, "-----BEGIN PGP") {
		return parsed{}, syntaxError(n, line, "OpenPGP armor: verify the signed file and parse only its signed text")
	}
	orig := line
	// coreutils marks a line whose name holds '\\', '\n' or '\r' with a leading backslash.
	escaped := line[0] == '\\'
	if escaped {
		line = line[1:]
	}
	end := strings.IndexAny(line, " \t(")
	if end < 0 {
		if !isHex(line) || escaped {
			return parsed{}, syntaxError(n, orig, "not a checksum line")
		}
		return bareLine(line, orig, n)
	}
	token := line[:end]
	switch {
	case isHex(token) && line[end] != '(':
		return gnuLine(token, line[end+1:], escaped, orig, n)
	case isTag(token):
		return tagLine(token, line[end:], escaped, orig, n)
	}
	return parsed{}, syntaxError(n, orig, "not a checksum line")
}

func bareLine(hexValue, orig string, n int) (parsed, error) {
	p, reason := fromHex(hexValue)
	if reason != "" {
		return parsed{}, syntaxError(n, orig, reason)
	}
	p.bare = true
	return p, nil
}

// gnuLine reads "hex  name", "hex *name" (coreutils text and binary mode:
// the name is everything after the mode character, spaces included) and
// "hex name" (a single space, as openSUSE and md5 -r write it).
func gnuLine(hexValue, rest string, escaped bool, orig string, n int) (parsed, error) {
	p, reason := fromHex(hexValue)
	if reason != "" {
		return parsed{}, syntaxError(n, orig, reason)
	}
	// Nothing but blanks after the digest: a bare digest, which only a
	// per-file checksum file may hold. A lone mode character is no name either.
	if strings.Trim(rest, " \t") == "" || rest == "*" {
		if escaped {
			return parsed{}, syntaxError(n, orig, "empty file name")
		}
		p.bare = true
		return p, nil
	}
	name := rest
	if rest[0] == ' ' || rest[0] == '*' {
		name = rest[1:]
	}
	if name == "" {
		return parsed{}, syntaxError(n, orig, "empty file name")
	}
	if escaped {
		var err error
		if name, err = unescape(name); err != nil {
			return parsed{}, syntaxError(n, orig, err.Error())
		}
	}
	p.name = name
	return p, nil
}

// tagLine reads BSD "SHA256 (name) = hex" and OpenSSL "SHA256(name)= hex".
// rest starts right after the tag. The name ends at the ")" before the
// "=" that precedes the digest, so names containing ") = " still parse.
func tagLine(tag, rest string, escaped bool, orig string, n int) (parsed, error) {
	rest = strings.TrimPrefix(rest, " ")
	if !strings.HasPrefix(rest, "(") {
		return parsed{}, syntaxError(n, orig, "expected '(' after the algorithm tag")
	}
	rest = strings.TrimRight(rest[1:], " \t")
	// The digest is the last blank-separated field, after "=" (BSD " = ",
	// OpenSSL ")= "); failing that, a compact ")=digest".
	var head, value string
	if sp := strings.LastIndexAny(rest, " \t"); sp >= 0 && strings.HasSuffix(strings.TrimRight(rest[:sp], " \t"), "=") {
		head, value = strings.TrimRight(rest[:sp], " \t"), rest[sp+1:]
	} else if i := strings.LastIndex(rest, ")="); i >= 0 {
		head, value = rest[:i+2], rest[i+2:]
	} else {
		return parsed{}, syntaxError(n, orig, "no ') = ' before the digest")
	}
	head = strings.TrimSuffix(strings.TrimSuffix(head, "="), " ")
	if !strings.HasSuffix(head, ")") {
		return parsed{}, syntaxError(n, orig, "no ')' closing the file name before '='")
	}
	name := head[:len(head)-1]
	if name == "" {
		return parsed{}, syntaxError(n, orig, "empty file name")
	}
	if escaped {
		var err error
		if name, err = unescape(name); err != nil {
			return parsed{}, syntaxError(n, orig, err.Error())
		}
	}
	p, reason := fromTag(tag, value)
	if reason != "" {
		return parsed{}, syntaxError(n, orig, reason)
	}
	p.name = name
	return p, nil
}

// fromHex picks the algorithm from the digest length, as sha256sum and
// friends leave it implicit. A non-empty reason means a syntax error.
func fromHex(v string) (parsed, string) {
	switch len(v) {
	case 64:
		return strong(digest.SHA256, v)
	case 128:
		return strong(digest.SHA512, v)
	case 32:
		return parsed{unusable: fmt.Errorf("%w: MD5 (32 hex digits)", ErrWeakAlgorithm)}, ""
	case 40:
		return parsed{unusable: fmt.Errorf("%w: SHA-1 (40 hex digits)", ErrWeakAlgorithm)}, ""
	case 56, 96:
		return parsed{unusable: fmt.Errorf("%w: %d hex digits (SHA-224 or SHA-384)", digest.ErrUnsupportedAlgorithm, len(v))}, ""
	}
	return parsed{}, fmt.Sprintf("digest has %d hex digits, want 64 (SHA-256) or 128 (SHA-512)", len(v))
}

func strong(alg digest.Algorithm, v string) (parsed, string) {
	// Most manifests are lower-case already: skip digest.New's copy.
	if len(v) == alg.HexLen() && isLowerHex(v) {
		return parsed{digest: digest.Digest{Algorithm: alg, Hex: v}}, ""
	}
	d, err := digest.New(alg, v)
	if err != nil {
		return parsed{}, err.Error()
	}
	return parsed{digest: d}, ""
}

// fromTag reads the value of a tagged line. Tags are matched without case
// or dashes, so "SHA256", "sha256", "SHA2-256" (OpenSSL 3, cksum) agree.
func fromTag(tag, v string) (parsed, string) {
	if v == "" {
		return parsed{}, "no digest after '='"
	}
	alg := strings.ToUpper(strings.ReplaceAll(tag, "-", ""))
	var want digest.Algorithm
	switch alg {
	case "SHA256", "SHA2256":
		want = digest.SHA256
	case "SHA512", "SHA2512":
		want = digest.SHA512
	case "MD5", "SHA1":
		if strings.ContainsAny(v, " \t") {
			return parsed{}, "digest contains blanks"
		}
		return parsed{unusable: fmt.Errorf("%w: %s", ErrWeakAlgorithm, tag)}, ""
	default:
		if strings.ContainsAny(v, " \t") {
			return parsed{}, "digest contains blanks"
		}
		return parsed{unusable: fmt.Errorf("%w: %s", digest.ErrUnsupportedAlgorithm, tag)}, ""
	}
	if len(v) == want.HexLen() {
		return strong(want, v)
	}
	// coreutils 9.2+ writes base64 digests with --base64 --tag.
	if raw, err := base64.StdEncoding.Strict().DecodeString(v); err == nil && len(raw)*2 == want.HexLen() {
		return strong(want, hex.EncodeToString(raw))
	}
	return parsed{}, fmt.Sprintf("%s digest has %d characters, want %d hex digits", tag, len(v), want.HexLen())
}

// unescape undoes coreutils' name escaping: only \\, \n and \r exist.
func unescape(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i+1 == len(s) {
			return "", fmt.Errorf("escaped name ends in a lone backslash")
		}
		i++
		switch s[i] {
		case '\\':
			b.WriteByte('\\')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		default:
			return "", fmt.Errorf("invalid escape \\%c in file name", s[i])
		}
	}
	return b.String(), nil
}

func isHex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// isTag accepts an algorithm name as BSD and OpenSSL write it: a letter,
// then letters, digits and dashes (SHA256, SHA2-256, BLAKE2b).
func isTag(s string) bool {
	if s == "" || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case i > 0 && (c >= '0' && c <= '9' || c == '-'):
		default:
			return false
		}
	}
	return true
}

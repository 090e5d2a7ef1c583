// Package redact keeps secrets out of logs and error messages: the one place
// that knows how a URL carries credentials.
package redact

import (
	"regexp"
	"strings"
	"unicode"
)

// schemeStart finds where a URL begins in a text: scheme://.
var schemeStart = regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.-]*)://`)

// natsSchemes are the schemes of URLs that nats.go and nats-server dial. A
// server URL has no path, so everything before the last "@" is user info,
// whatever characters a password holds: Go's url.Parse (which nats.go uses)
// takes the last "@" of the authority, and a password with "/", "?" or "#"
// ends the authority early, which a redactor that stops there would leave
// whole.
var natsSchemes = map[string]bool{"nats": true, "tls": true, "ws": true, "wss": true, "nats-route": true, "nats-leaf": true}

// Placeholder replaces the user info of a URL.
const Placeholder = "REDACTED"

// URLs returns s with the user info of every URL in it replaced by
// REDACTED: a URL, a comma-separated list of them (nats.go splits a server
// list at commas), or a message quoting them. A lone user name is redacted
// too, since NATS takes a token there. A URL ends at white space or a comma.
// For NATS schemes the user info is everything up to the URL's last "@"; for
// others (https), what Go's url.Parse takes: up to the last "@" before the
// first "/", "?" or "#".
func URLs(s string) string {
	var b strings.Builder
	for {
		loc := schemeStart.FindStringSubmatchIndex(s)
		if loc == nil {
			b.WriteString(s)
			return b.String()
		}
		scheme := strings.ToLower(s[loc[2]:loc[3]])
		b.WriteString(s[:loc[1]])
		rest := s[loc[1]:]
		end := strings.IndexFunc(rest, func(r rune) bool { return unicode.IsSpace(r) || r == ',' })
		if end < 0 {
			end = len(rest)
		}
		token := rest[:end]
		authority := token
		if !natsSchemes[scheme] {
			if i := strings.IndexAny(token, "/?#"); i >= 0 {
				authority = token[:i]
			}
		}
		if at := strings.LastIndex(authority, "@"); at >= 0 {
			b.WriteString(Placeholder)
			token = token[at:]
		}
		b.WriteString(token)
		s = rest[end:]
	}
}

// Error wraps err so that its message has no URL credentials, keeping the
// chain for errors.Is and errors.As.
func Error(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if red := URLs(msg); red != msg {
		return &redacted{msg: red, err: err}
	}
	return err
}

type redacted struct {
	msg string
	err error
}

func (e *redacted) Error() string { return e.msg }
func (e *redacted) Unwrap() error { return e.err }

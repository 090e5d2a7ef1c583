// Package redact keeps secrets out of logs and error messages: the one place
// that knows how a URL carries credentials.
package redact

import "regexp"

// userInfo matches the user-info part of any URL in a text: scheme://USER[:PASSWORD]@.
// A lone user name is redacted too, since NATS takes a token there.
var userInfo = regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]+@`)

// Placeholder replaces the user info of a URL.
const Placeholder = "REDACTED"

// URLs returns s with the user info of every URL in it replaced by
// REDACTED: a URL, a comma-separated list of them, or a message quoting them.
func URLs(s string) string {
	return userInfo.ReplaceAllString(s, "${1}"+Placeholder+"@")
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

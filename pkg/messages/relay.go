package messages

import "strings"

// Relayed reports whether a message was published by the server on
// someone's behalf rather than by the party that writes its subject.
// nats-server checks the subject a client publishes to, never the reply
// subject it names, and answers a direct get there: anyone who may
// direct-get from a stream whose content it writes can have that content
// delivered onto any subject, and a stream (results, a key-value bucket)
// stores it. Such an answer always carries the server's Nats-Stream and
// Nats-Subject headers (a stored one keeps them, and a direct get of it
// adds its own). With stream "", h is of a live message, which must have
// none; otherwise h is of a direct get of stream, which must have exactly
// one of each, naming stream and subject.
func Relayed(h map[string][]string, stream, subject string) bool {
	var streams, subjects []string
	for k, v := range h {
		switch {
		case strings.EqualFold(k, "Nats-Stream"):
			streams = append(streams, v...)
		case strings.EqualFold(k, "Nats-Subject"):
			subjects = append(subjects, v...)
		}
	}
	if stream == "" {
		return len(streams) > 0 || len(subjects) > 0
	}
	return len(streams) != 1 || streams[0] != stream || len(subjects) != 1 || subjects[0] != subject
}

// HeaderWhole reports whether h, a message's headers as nats.go parsed
// them, account for every one of the n bytes of its header block (n:
// the message's wire size less subject, reply and payload). nats.go
// stops reading headers at the first blank line; nats-server neither
// checks a publisher's header block nor minds a blank line inside it,
// and appends its own headers (a direct get's Nats-Stream, Nats-Subject)
// after whatever is stored. A header block made by hand — a marker, the
// markings a genuine direct get would carry, then a blank line — so
// hides the server's markings of a relay from every reader. Blocks
// written by nats.go and the server ("Key: value" lines) are accounted
// for exactly; an inline status line is not, and fails.
func HeaderWhole(h map[string][]string, n int) bool {
	if h == nil {
		return n == 0
	}
	size := len("NATS/1.0\r\n") + len("\r\n")
	for k, vs := range h {
		for _, v := range vs {
			size += len(k) + len(": ") + len(v) + len("\r\n")
		}
	}
	return size == n
}

// HeaderWriter marks a message with the role of the party that wrote it
// (internal/stage: key-value entries; the collector: results). Only that
// party may publish on the message's subject, so a message carrying its
// writer's marker and none of the server's relay markings (Relayed) is the
// writer's: the server's answers to requests that name the subject as
// reply subject carry no marker (a direct get with "no_hdr" carries no
// header at all) or the server's own headers.
const HeaderWriter = "Vmprep-Writer"

// ResultsWriter is the marker on every result: the collector's, and the
// resolver's answers (refusals, repeated requests) — both run as the one
// user that may publish on vmprep.result.>.
const ResultsWriter = "collector"

// Marked reports whether h carries exactly one writer marker, writer's.
func Marked(h map[string][]string, writer string) bool {
	var writers []string
	for k, v := range h {
		if strings.EqualFold(k, HeaderWriter) {
			writers = append(writers, v...)
		}
	}
	return len(writers) == 1 && writers[0] == writer
}

// FromResultsWriter reports whether h, the headers of a result on
// subject, are of a result the collector published: marked ResultsWriter
// and not relayed. stream "" is a live message, StreamResults a direct
// get of the stored one (see Relayed). A live message must also have
// arrived under subject itself (the caller checks): a pull request's reply
// subject receives a consumer's messages, with headers their publisher
// chose, under their own subjects.
func FromResultsWriter(h map[string][]string, stream, subject string) bool {
	return !Relayed(h, stream, subject) && Marked(h, ResultsWriter)
}

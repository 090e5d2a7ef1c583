// Package e2e holds the multi-process tests: the five binaries built and run
// as separate OS processes against a real NATS server and a local HTTP mirror,
// with workers killed mid-download and mid-conversion.
package e2e

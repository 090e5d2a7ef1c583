package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"

	"github.com/vmprep/vmprep/internal/cli"
)

// defaultBcryptCost is the cost nats-server's own tooling uses (nats
// server passwd): a login takes some milliseconds of the server's time.
const defaultBcryptCost = 11

// runPasswd prints a bcrypt hash of a password, for a nats-server
// configuration (deploy/nats/auth.conf takes hashes as well as passwords).
func runPasswd(_ context.Context, args []string, stdout, stderr io.Writer) int {
	return passwd(args, os.Stdin, stdout, stderr)
}

func passwd(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cost := fs.Int("cost", defaultBcryptCost, fmt.Sprintf("bcrypt cost (%d to %d): each step doubles the work of a login, and of guessing", bcrypt.MinCost, bcrypt.MaxCost))
	fs.Usage = cli.Usage(fs, "vmprep passwd [--cost N] < PASSWORD-FILE\n\n"+
		"Prints the bcrypt hash of a password read from standard input (asked twice, without echo, on a\n"+
		"terminal), for nats-server: put the hash where the password went (auth.conf's $VMPREP_*_PASSWORD),\n"+
		"and keep the password itself in the --password-file of the process that logs in.")
	if ok, code := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return failf(stderr, 2, "vmprep passwd", "unexpected argument %q (the password is read from standard input)", fs.Arg(0))
	}
	if *cost < bcrypt.MinCost || *cost > bcrypt.MaxCost {
		return failf(stderr, 2, "vmprep passwd", "--cost %d: want %d to %d", *cost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	var pw []byte
	if fd := int(stdin.Fd()); term.IsTerminal(fd) {
		fmt.Fprint(stderr, "password: ")
		first, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			return failf(stderr, 1, "vmprep passwd", "read the password: %v", err)
		}
		fmt.Fprint(stderr, "again: ")
		again, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			return failf(stderr, 1, "vmprep passwd", "read the password: %v", err)
		}
		if !bytes.Equal(first, again) {
			return failf(stderr, 1, "vmprep passwd", "the two passwords differ")
		}
		pw = first
	} else {
		// As --password-file reads a password file: all of it, without the
		// line end.
		b, err := io.ReadAll(io.LimitReader(stdin, 4096))
		if err != nil {
			return failf(stderr, 1, "vmprep passwd", "read the password: %v", err)
		}
		pw = []byte(strings.TrimRight(string(b), "\r\n"))
	}
	if len(pw) == 0 {
		return failf(stderr, 1, "vmprep passwd", "empty password")
	}
	hash, err := bcrypt.GenerateFromPassword(pw, *cost)
	if err != nil {
		return failf(stderr, 1, "vmprep passwd", "%v", err) // longer than 72 bytes, say
	}
	fmt.Fprintln(stdout, string(hash))
	return 0
}

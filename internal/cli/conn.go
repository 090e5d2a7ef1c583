package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/redact"
)

// Connection are the flags that say how to reach and authenticate to NATS.
// Secrets come from files (a credentials file, or a password file), never
// from the command line, and no URL is ever logged or reported with its
// user info.
type Connection struct {
	NATSURL      string
	Creds        string
	User         string
	PasswordFile string
	TLSCA        string
	TLSCert      string
	TLSKey       string
	// InboxPrefix is where replies to this process's requests arrive
	// (default _INBOX_<user> with --user, so that permissions can give each
	// user its own inbox; _INBOX otherwise).
	InboxPrefix string
	// Insecure allows sending a password or token to a server beyond this
	// host without TLS (--insecure).
	Insecure bool

	// pingInterval overrides PingInterval (tests).
	pingInterval time.Duration
	// dialer replaces nats.go's (tests: name lookups on a loopback DNS server).
	dialer *net.Dialer
}

// A connection whose network vanished without a word (a host detached from
// its network, an address changed, a NAT that forgot the flow) looks alive
// until pings go unanswered. nats.go's default, a ping every 2 minutes and 2
// outstanding, leaves a stage deaf, and healthy on /healthz, for up to 6
// minutes; this notices within about 3 intervals and reconnects.
const (
	PingInterval        = 10 * time.Second
	MaxPingsOutstanding = 2
)

// RegisterConnection adds --nats and the authentication and TLS flags.
func (c *Connection) RegisterConnection(fs *flag.FlagSet) {
	fs.StringVar(&c.NATSURL, "nats", envOr("NATS_URL", nats.DefaultURL), "NATS server URL(s), comma-separated (env NATS_URL); put credentials in --creds or --password-file, not here")
	// --help shows the default, which may come from NATS_URL.
	fs.Lookup("nats").DefValue = redact.URLs(c.NATSURL)
	c.RegisterAuth(fs)
	c.RegisterInsecure(fs)
}

// RegisterInsecure adds --insecure: send credentials in clear beyond this
// host (commands that take --nats; vmprep serve has an --insecure of its own).
func (c *Connection) RegisterInsecure(fs *flag.FlagSet) {
	fs.BoolVar(&c.Insecure, "insecure", false, "allow sending a password or token to a NATS server beyond this host without TLS (anyone on the path could read it)")
}

// RegisterAuth adds the authentication and TLS flags (not --nats).
func (c *Connection) RegisterAuth(fs *flag.FlagSet) {
	fs.StringVar(&c.Creds, "creds", envOr("NATS_CREDS", ""), "NATS credentials file (JWT + NKey seed) (env NATS_CREDS)")
	fs.StringVar(&c.User, "user", envOr("NATS_USER", ""), "NATS user name, with --password-file (env NATS_USER)")
	fs.StringVar(&c.PasswordFile, "password-file", envOr("NATS_PASSWORD_FILE", ""), "file holding the NATS user's password (env NATS_PASSWORD_FILE)")
	fs.StringVar(&c.TLSCA, "tls-ca", envOr("NATS_CA", ""), "PEM file of the CA(s) that sign the NATS servers' certificates (env NATS_CA)")
	fs.StringVar(&c.TLSCert, "tls-cert", envOr("NATS_CERT", ""), "PEM client certificate, for servers that verify clients (env NATS_CERT)")
	fs.StringVar(&c.TLSKey, "tls-key", envOr("NATS_KEY", ""), "PEM private key of --tls-cert (env NATS_KEY)")
	fs.StringVar(&c.InboxPrefix, "inbox-prefix", envOr("NATS_INBOX_PREFIX", ""), "subject prefix of this process's reply inboxes (env NATS_INBOX_PREFIX; default _INBOX_<user> with --user, else _INBOX); the server's permissions let each user subscribe to its own")
}

// RedactedURL is the --nats value fit for logs and messages.
func (c *Connection) RedactedURL() string { return redact.URLs(c.NATSURL) }

// identity says who the connection authenticates as, for error messages.
func (c *Connection) identity() string {
	switch {
	case c.Creds != "":
		return "with credentials file " + c.Creds
	case c.User != "":
		return "as user " + c.User
	case redact.URLs(c.NATSURL) != c.NATSURL:
		return "with the user given in the URL"
	}
	return "without credentials"
}

// Options are the nats.Options for the credentials and TLS flags. Files are
// read now, so that a missing or unreadable one is reported at once.
func (c *Connection) Options() ([]nats.Option, error) {
	var opts []nats.Option
	if c.Creds != "" && (c.User != "" || c.PasswordFile != "") {
		return nil, errors.New("--creds and --user/--password-file: choose one way to authenticate")
	}
	if c.Creds != "" {
		if err := readable(c.Creds); err != nil {
			return nil, fmt.Errorf("--creds: %w", err)
		}
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	switch {
	case c.User != "" && c.PasswordFile == "":
		return nil, errors.New("--user needs --password-file (a password on the command line is visible to every user of the host)")
	case c.User == "" && c.PasswordFile != "":
		return nil, errors.New("--password-file needs --user")
	case c.User != "":
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("--password-file: %w", err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return nil, fmt.Errorf("--password-file %s is empty", c.PasswordFile)
		}
		opts = append(opts, nats.UserInfo(c.User, pw))
	}
	if prefix := c.Inbox(); prefix != "" {
		if err := validInboxPrefix(prefix); err != nil {
			return nil, fmt.Errorf("--inbox-prefix: %w", err)
		}
		opts = append(opts, nats.CustomInboxPrefix(prefix))
	}
	if c.TLSCA != "" {
		if err := readable(c.TLSCA); err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	switch {
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return nil, errors.New("--tls-cert and --tls-key go together")
	case c.TLSCert != "":
		if _, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey); err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts, nil
}

// secure reports whether every connection is TLS whatever the server says:
// a CA or a client certificate given (nats.go then refuses a server that
// offers no TLS), or every URL tls:// or wss://.
func (c *Connection) secure(urls []*url.URL) bool {
	if c.TLSCA != "" || c.TLSCert != "" {
		return true
	}
	for _, u := range urls {
		if s := strings.ToLower(u.Scheme); s != "tls" && s != "wss" {
			return false
		}
	}
	return true
}

// ErrCleartext marks a refusal to send credentials without TLS.
var ErrCleartext = errors.New("the password or token would cross the network in clear")

// checkCleartext refuses, unless Insecure, to send a password or token to a
// server beyond this host over a connection that may be plain: a nats://
// URL upgrades to TLS only when the server asks, and a server an attacker
// stands in for does not ask. Loopback is allowed: the password never
// leaves the host. It returns whether credentials go in clear to loopback
// (the connection must then not follow servers the cluster advertises).
func (c *Connection) checkCleartext() (plainLoopback bool, err error) {
	var urls []*url.URL
	userInURL := false
	for _, raw := range strings.Split(c.NATSURL, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw // as nats.go reads a bare host:port
		}
		u, err := url.Parse(raw)
		if err != nil {
			return false, fmt.Errorf("--nats %s: %w", redact.URLs(raw), redact.Error(err))
		}
		urls = append(urls, u)
		userInURL = userInURL || u.User != nil
	}
	if (c.User == "" && !userInURL) || c.Insecure || c.secure(urls) {
		return false, nil
	}
	for _, u := range urls {
		if s := strings.ToLower(u.Scheme); s == "tls" || s == "wss" || loopbackHost(u.Hostname()) {
			continue
		}
		return false, fmt.Errorf("refusing to connect %s to %s: it is beyond this host and %s:// without TLS, so %w. Use tls://%s with --tls-ca (the CA of the server's certificate), or --insecure to accept the risk",
			c.identity(), redact.URLs(u.String()), u.Scheme, ErrCleartext, u.Host)
	}
	return true, nil
}

// loopbackHost reports whether host names this machine only.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Inbox is the inbox prefix the connection uses: --inbox-prefix, else
// _INBOX_<user> with --user, else "" (nats.go's _INBOX).
func (c *Connection) Inbox() string {
	switch {
	case c.InboxPrefix != "":
		return c.InboxPrefix
	case c.User != "":
		return "_INBOX_" + c.User
	}
	return ""
}

// validInboxPrefix checks a prefix: subject tokens without wildcards, no
// trailing dot (nats.go appends ".<id>").
func validInboxPrefix(p string) error {
	for _, tok := range strings.Split(p, ".") {
		if tok == "" || strings.ContainsAny(tok, "*> \t\r\n") {
			return fmt.Errorf("%q is not a subject prefix (dot-separated tokens without wildcards or spaces)", p)
		}
	}
	return nil
}

func readable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}

// ErrRefused marks a connection the server refused for a reason that
// waiting will not fix: bad credentials or a TLS failure.
var ErrRefused = errors.New("refused")

// Connect connects to NATS, reconnecting forever (a stage outlives server
// restarts). With waitForServer, a server that is not up yet is waited for;
// without it (a one-shot client), an unreachable server is an error at once.
// Either way a refusal — wrong credentials ("authorization violation"), a
// certificate the other side does not accept — is an error at once.
// Errors never contain the URL's user info.
func (c *Connection) Connect(name string, log *slog.Logger, waitForServer bool) (*nats.Conn, error) {
	auth, err := c.Options()
	if err != nil {
		return nil, err
	}
	plainLoopback, err := c.checkCleartext()
	if err != nil {
		return nil, err
	}
	if c.dialer != nil {
		auth = append(auth, nats.SetCustomDialer(c.dialer))
	}
	if plainLoopback {
		// A cluster advertises its other servers' addresses; the
		// password would go to them in clear on a reconnect.
		auth = append(auth, nats.IgnoreDiscoveredServers())
	}
	var lastReconnectErr sync.Map // one log line per distinct reconnect error
	ping := c.pingInterval
	if ping == 0 {
		ping = PingInterval
	}
	opts := append([]nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.PingInterval(ping),
		nats.MaxPingsOutstanding(MaxPingsOutstanding),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS", "err", redact.Error(err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			lastReconnectErr.Clear()
			log.Info("reconnected to NATS", "url", redact.URLs(nc.ConnectedUrl()))
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if _, seen := lastReconnectErr.LoadOrStore(err.Error(), true); !seen {
				log.Warn("cannot reach NATS yet; retrying", "err", redact.Error(err))
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { log.Warn("NATS error", "err", redact.Error(err)) }),
	}, auth...)
	nc, err := nats.Connect(c.NATSURL, opts...)
	if err == nil {
		return nc, nil
	}
	if refused(err) {
		return nil, fmt.Errorf("connect to NATS at %s %s: %w", c.RedactedURL(), c.identity(), refusal(err))
	}
	if !waitForServer {
		return nil, fmt.Errorf("connect to NATS at %s: %w", c.RedactedURL(), redact.Error(err))
	}
	log.Warn("waiting for NATS", "nats", c.RedactedURL(), "err", redact.Error(err))
	nc, err = nats.Connect(c.NATSURL, append(opts, nats.RetryOnFailedConnect(true))...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", c.RedactedURL(), redact.Error(err))
	}
	return nc, nil
}

// PermissionRefusal returns the server's last refusal of one of nc's
// publishes or subscriptions for want of permission, or nil. The server
// drops such a request without an answer, so the caller's own error is only
// a timeout: this names the cause.
func PermissionRefusal(nc *nats.Conn) error {
	if nc == nil {
		return nil
	}
	if err := nc.LastError(); err != nil && errors.Is(err, nats.ErrPermissionViolation) {
		return redact.Error(err)
	}
	return nil
}

// refusal words a refused connection for the operator, wrapping ErrRefused
// and the cause.
func refusal(err error) error {
	what := "TLS failed (check --tls-ca, --tls-cert and --tls-key against the server's tls block)"
	for _, e := range []error{nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired} {
		if errors.Is(err, e) || strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
			what = "authorization violation: the server does not accept these credentials"
			break
		}
	}
	return fmt.Errorf("%w: %s: %w", ErrRefused, what, redact.Error(err))
}

// refused says whether a connection error is one that retrying cannot fix:
// the server rejected the credentials, or TLS failed (an unknown CA, a name
// mismatch, a client certificate missing or not accepted).
func refused(err error) bool {
	for _, e := range []error{nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired,
		nats.ErrSecureConnRequired, nats.ErrSecureConnWanted, nats.ErrNkeysNotSupported} {
		if errors.Is(err, e) {
			return true
		}
	}
	var (
		verify    *tls.CertificateVerificationError
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		op        *net.OpError
	)
	if errors.As(err, &verify) || errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) {
		return true
	}
	if errors.As(err, &op) && op.Op == "remote error" {
		return true // a TLS alert from the server: it refused our certificate (or its absence)
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, nats.ErrNoServers) || errors.Is(err, io.EOF) {
		return false
	}
	return strings.Contains(err.Error(), "tls:") || strings.Contains(strings.ToLower(err.Error()), "authorization violation")
}

// ClosedCause returns a context that ends when ctx does or when nc closes for
// good (say, the server stopped accepting its credentials), with the reason
// as its cause.
func ClosedCause(ctx context.Context, nc *nats.Conn) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	nc.SetClosedHandler(func(nc *nats.Conn) {
		why := nc.LastError()
		if why == nil {
			why = nats.ErrConnectionClosed
		}
		if refused(why) {
			why = refusal(why)
		}
		cancel(fmt.Errorf("NATS connection closed: %w", redact.Error(why)))
	})
	return ctx, func() { cancel(context.Canceled) }
}

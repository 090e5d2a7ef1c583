package cli

// The container images are FROM scratch: no CA certificates, so without
// these (Mozilla's roots, compiled in) a resolver or fetcher there could not
// download from an https origin such as cloud-images.ubuntu.com. They are
// used only where the system has no roots of its own; SSL_CERT_FILE or a
// mounted bundle still takes precedence.
import _ "golang.org/x/crypto/x509roots/fallback"

package cli

import (
	"crypto/x509"
	"os"
	"os/exec"
	"testing"
)

// Where the system has no CA certificates (a FROM scratch image), the
// processes still trust the public roots. The system's roots are loaded once
// per process, so the check runs in a child with none to find.
func TestFallbackRootsWithoutSystemCerts(t *testing.T) {
	if os.Getenv("VMPREP_TEST_NO_SYSTEM_ROOTS") == "1" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			t.Fatalf("SystemCertPool: %v", err)
		}
		//lint:ignore SA1019 counting the roots; none are system roots here
		if n := len(pool.Subjects()); n < 50 {
			t.Fatalf("%d roots without system certificates, want Mozilla's (over 100)", n)
		}
		return
	}
	empty := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFallbackRootsWithoutSystemCerts$", "-test.count=1")
	cmd.Env = append(os.Environ(), "VMPREP_TEST_NO_SYSTEM_ROOTS=1", "SSL_CERT_FILE="+empty+"/none.pem", "SSL_CERT_DIR="+empty)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child without system certificates: %v\n%s", err, out)
	}
}

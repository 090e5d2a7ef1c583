package stage

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestDenied(t *testing.T) {
	violation := func(subject string) error {
		return fmt.Errorf("%w: Permissions Violation for Publish to %q", nats.ErrPermissionViolation, subject)
	}
	for _, tc := range []struct {
		err     error
		subject string
		want    bool
	}{
		{violation("$JS.API.STREAM.CREATE.VMPREP_WORK"), "$JS.API.STREAM.CREATE.VMPREP_WORK", true},
		{violation("$JS.API.CONSUMER.CREATE.VMPREP_WORK.fetcher.vmprep.asset.fetch"), "$JS.API.CONSUMER.CREATE.VMPREP_WORK.fetcher", true},
		// another stream whose name starts the same, another consumer
		{violation("$JS.API.STREAM.CREATE.VMPREP_WORK2"), "$JS.API.STREAM.CREATE.VMPREP_WORK", false},
		{violation("$JS.API.CONSUMER.CREATE.VMPREP_WORK.fetcher2"), "$JS.API.CONSUMER.CREATE.VMPREP_WORK.fetcher", false},
		{fmt.Errorf("%w: Permissions Violation for Subscription to %q", nats.ErrPermissionViolation, "$JS.API.STREAM.CREATE.VMPREP_WORK"), "$JS.API.STREAM.CREATE.VMPREP_WORK", false},
		{errors.New(`publish to "$JS.API.STREAM.CREATE.VMPREP_WORK"`), "$JS.API.STREAM.CREATE.VMPREP_WORK", false},
		{nil, "$JS.API.STREAM.CREATE.VMPREP_WORK", false},
	} {
		if got := Denied(tc.err, tc.subject); got != tc.want {
			t.Errorf("Denied(%v, %q) = %v, want %v", tc.err, tc.subject, got, tc.want)
		}
	}
}

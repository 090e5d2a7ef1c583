package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestLoggerDurations: both log formats write durations as people read them.
func TestLoggerDurations(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		c := Common{LogLevel: "info", LogFormat: format}
		log, err := c.Logger(&buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("retry", "backoff", 1500*time.Millisecond)
		if out := buf.String(); !strings.Contains(out, "1.5s") || strings.Contains(out, "1500000000") {
			t.Errorf("%s log: %s", format, out)
		}
	}
}

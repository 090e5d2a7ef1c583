package testutil

import (
	"os"
	"strconv"
)

// EnvInt is the positive integer in the environment variable key, or def:
// the benchmarks take their sizes and rounds this way.
func EnvInt(key string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil && v > 0 {
		return v
	}
	return def
}

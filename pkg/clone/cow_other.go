//go:build !linux && !darwin

package clone

// cowClone: no copy-on-write clone call known on this platform.
func cowClone(base, tmp string) (Method, error) { return "", errUnsupported }

package clone

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// cowClone makes tmp an APFS clone of base with clonefile(2), which creates
// tmp itself. HFS+ and other volumes (ENOTSUP) and another volume (EXDEV)
// are errUnsupported.
func cowClone(base, tmp string) (Method, error) {
	if err := unix.Clonefile(base, tmp, unix.CLONE_NOFOLLOW); err != nil {
		if cowUnsupported(err) {
			return "", fmt.Errorf("%w: clonefile: %w", errUnsupported, err)
		}
		return "", fmt.Errorf("clonefile: %w", err)
	}
	return MethodClonefile, nil
}

func cowUnsupported(err error) bool {
	for _, e := range []error{unix.EXDEV, unix.ENOTSUP, unix.EOPNOTSUPP, unix.EINVAL, unix.ENOSYS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

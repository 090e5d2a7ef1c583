package catalog

import (
	"time"

	"github.com/vmprep/vmprep/pkg/image"
)

// BootMode says how the image boots.
type BootMode string

// Boot modes.
const (
	// BootKernel: direct kernel boot with a kernel, an optional initramfs and a disk.
	BootKernel BootMode = "kernel"
	// BootFirmware: the disk boots through firmware/EFI; there is no kernel asset.
	BootFirmware BootMode = "firmware"
)

// Resolution is a spec resolved to its assets.
type Resolution struct {
	Spec       image.Spec    `json:"spec"`
	BootMode   BootMode      `json:"boot_mode"`
	Assets     []image.Asset `json:"assets"`
	ResolvedAt time.Time     `json:"resolved_at"`
	// Roots are the trust roots it was resolved under (Catalog.Roots); nil
	// in records written before resolutions named them, which answer no
	// request.
	Roots *TrustRoots `json:"roots,omitempty"`
	// Unpinned is true when the build came from a mirror in the classic
	// layout (only release/) that does not say which build it is: Spec has
	// no serial, and the build cannot be pinned or asked for again.
	Unpinned bool `json:"unpinned,omitempty"`
}

// Asset returns the asset with the given role, if present.
func (r Resolution) Asset(role image.Role) (image.Asset, bool) {
	for _, a := range r.Assets {
		if a.Role == role {
			return a, true
		}
	}
	return image.Asset{}, false
}

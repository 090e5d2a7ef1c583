package catalog

import (
	"time"

	"github.com/vmprep/vmprep/pkg/image"
)

// The types that name an image live in pkg/image, so that the wire contract
// does not depend on the catalog; these aliases keep the catalog's spelling.
type (
	// Arch is a CPU architecture in Debian/Ubuntu spelling.
	Arch = image.Arch
	// ImageSpec names an image.
	ImageSpec = image.Spec
	// Role is what an asset is for.
	Role = image.Role
	// DiskFormat is the on-disk format of a root disk.
	DiskFormat = image.DiskFormat
	// Trust records where confidence in an asset's digest came from.
	Trust = image.Trust
	// Asset is one file of a resolved image.
	Asset = image.Asset
)

// Re-exported constants of pkg/image.
const (
	ArchAMD64     = image.ArchAMD64
	ArchARM64     = image.ArchARM64
	RoleKernel    = image.RoleKernel
	RoleInitramfs = image.RoleInitramfs
	RoleDisk      = image.RoleDisk
	FormatQCOW2   = image.FormatQCOW2
	FormatRaw     = image.FormatRaw
)

// ParseArch accepts an architecture in Debian or kernel spelling (see image.ParseArch).
func ParseArch(s string) (Arch, error) { return image.ParseArch(s) }

// HostArch is the architecture this program runs on (see image.HostArch).
func HostArch() Arch { return image.HostArch() }

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
	Spec       ImageSpec `json:"spec"`
	BootMode   BootMode  `json:"boot_mode"`
	Assets     []Asset   `json:"assets"`
	ResolvedAt time.Time `json:"resolved_at"`
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
func (r Resolution) Asset(role Role) (Asset, bool) {
	for _, a := range r.Assets {
		if a.Role == role {
			return a, true
		}
	}
	return Asset{}, false
}

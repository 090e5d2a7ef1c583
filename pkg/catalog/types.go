package catalog

import (
	"time"

	"github.com/vmprep/vmprep/pkg/digest"
)

// Arch is a CPU architecture in Debian/Ubuntu spelling.
type Arch string

// Supported architectures. "x86_64" and "aarch64" are accepted as aliases.
const (
	ArchAMD64 Arch = "amd64"
	ArchARM64 Arch = "arm64"
)

// ImageSpec names an image. Distro is case-insensitive; an empty Arch means the host's.
type ImageSpec struct {
	Distro  string `json:"distro"`
	Version string `json:"version"`
	Arch    Arch   `json:"arch,omitempty"`
}

// Role is what an asset is for.
type Role string

// Asset roles.
const (
	RoleKernel    Role = "kernel"
	RoleInitramfs Role = "initramfs"
	RoleDisk      Role = "disk"
)

// DiskFormat is the on-disk format of a root disk.
type DiskFormat string

// Disk formats.
const (
	FormatQCOW2 DiskFormat = "qcow2"
	FormatRaw   DiskFormat = "raw"
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

// Trust records where confidence in an asset's digest came from.
type Trust struct {
	// Signed is true when the manifest's OpenPGP signature was verified.
	Signed bool `json:"signed"`
	// Signer is the upper-case hex fingerprint of the key that signed the manifest.
	Signer string `json:"signer,omitempty"`
	// ManifestURL is the checksum manifest that listed the digest.
	ManifestURL string `json:"manifest_url"`
	// SignatureURL is the detached signature, if any (empty for clearsigned or unsigned).
	SignatureURL string `json:"signature_url,omitempty"`
	// Note explains an unsigned result ("the distribution publishes no signature", or
	// "allow-unsigned was set").
	Note string `json:"note,omitempty"`
}

// Asset is one file of a resolved image.
type Asset struct {
	Role Role `json:"role"`
	// Name is the file name the manifest lists it under.
	Name string `json:"name"`
	URL  string `json:"url"`
	// Digest is the expected digest from the verified manifest.
	Digest digest.Digest `json:"digest"`
	// Size in bytes when known, else 0.
	Size int64 `json:"size,omitempty"`
	// Format is set for RoleDisk.
	Format DiskFormat `json:"format,omitempty"`
	Trust  Trust      `json:"trust"`
}

// Resolution is a spec resolved to its assets.
type Resolution struct {
	Spec       ImageSpec `json:"spec"`
	BootMode   BootMode  `json:"boot_mode"`
	Assets     []Asset   `json:"assets"`
	ResolvedAt time.Time `json:"resolved_at"`
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

// Package image holds the small value types that name an image and its files
// on the wire and in the catalog: Spec (distro, version, arch), Arch, Role,
// DiskFormat, Asset and Trust. It has no dependencies beyond the standard
// library and pkg/digest, so the wire contract (pkg/messages) and a client
// (pkg/client) can use them without the catalog, OpenPGP or NATS server.
package image

import (
	"errors"

	"github.com/vmprep/vmprep/pkg/digest"
)

// ErrInvalidSpec: a distro, version or arch is empty, too long, or holds
// characters that could escape a URL path or the cache.
var ErrInvalidSpec = errors.New("invalid image spec")

// Arch is a CPU architecture in Debian/Ubuntu spelling.
type Arch string

// Supported architectures. "x86_64" and "aarch64" are accepted as aliases.
const (
	ArchAMD64 Arch = "amd64"
	ArchARM64 Arch = "arm64"
)

// Spec names an image. Distro is case-insensitive; an empty Arch means the host's.
//
// Serial pins one build of a version, for catalogs that publish each build
// in its own immutable directory (Ubuntu's release-<serial>/): empty means
// the newest, and a result names the serial it resolved to, so a later
// request can ask for exactly that build again.
type Spec struct {
	Distro  string `json:"distro"`
	Version string `json:"version"`
	Arch    Arch   `json:"arch,omitempty"`
	Serial  string `json:"serial,omitempty"`
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

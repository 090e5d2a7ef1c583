package testmirror

import (
	"fmt"
	"path"

	"github.com/vmprep/vmprep/pkg/catalog"
)

// FedoraCompose is the compose id of every Fedora image the mirror publishes.
// Real Fedora releases carry one (e.g. "1.4"); resolvers must discover it.
const FedoraCompose = "1.4"

// debianCodenames maps Debian release numbers to codenames, as the real
// cloud.debian.org tree is laid out by codename.
var debianCodenames = map[string]string{"11": "bullseye", "12": "bookworm", "13": "trixie"}

func fedoraArch(a catalog.Arch) string {
	switch a {
	case catalog.ArchAMD64:
		return "x86_64"
	case catalog.ArchARM64:
		return "aarch64"
	}
	return string(a)
}

// Paths below are relative to the mirror root and mirror the real hosts'
// paths (cloud-images.ubuntu.com, cloud.debian.org, download.fedoraproject.org),
// so a catalog whose base URL is replaced by Mirror.URL resolves into them.

func ubuntuReleaseDir(v string) string  { return path.Join("releases", v, "release") }
func ubuntuUnpackedDir(v string) string { return path.Join(ubuntuReleaseDir(v), "unpacked") }
func ubuntuPrefix(v string, a catalog.Arch) string {
	return fmt.Sprintf("ubuntu-%s-server-cloudimg-%s", v, a)
}

func debianDir(v string) string {
	return path.Join("images", "cloud", debianCodenames[v], "latest")
}

func fedoraDir(v string, a catalog.Arch) string {
	return path.Join("pub", "fedora", "linux", "releases", v, "Cloud", fedoraArch(a), "images")
}

func fedoraDiskName(v string, a catalog.Arch) string {
	return fmt.Sprintf("Fedora-Cloud-Base-Generic-%s-%s.%s.qcow2", v, FedoraCompose, fedoraArch(a))
}

func fedoraChecksumName(v string, a catalog.Arch) string {
	return fmt.Sprintf("Fedora-Cloud-%s-%s-%s-CHECKSUM", v, FedoraCompose, fedoraArch(a))
}

// assetPath returns the relative path of an asset, or "" if the distro has no
// such asset.
func assetPath(distro, version string, a catalog.Arch, role catalog.Role) string {
	switch distro {
	case "ubuntu":
		switch role {
		case catalog.RoleDisk:
			return path.Join(ubuntuReleaseDir(version), ubuntuPrefix(version, a)+".img")
		case catalog.RoleKernel:
			return path.Join(ubuntuUnpackedDir(version), ubuntuPrefix(version, a)+"-vmlinuz-generic")
		case catalog.RoleInitramfs:
			return path.Join(ubuntuUnpackedDir(version), ubuntuPrefix(version, a)+"-initrd-generic")
		}
	case "debian":
		if role == catalog.RoleDisk {
			return path.Join(debianDir(version), fmt.Sprintf("debian-%s-genericcloud-%s.qcow2", version, a))
		}
	case "fedora":
		if role == catalog.RoleDisk {
			return path.Join(fedoraDir(version, a), fedoraDiskName(version, a))
		}
	}
	return ""
}

// manifestPath returns the relative path of the manifest that lists an asset.
func manifestPath(distro, version string, a catalog.Arch, role catalog.Role) string {
	switch distro {
	case "ubuntu":
		if role == catalog.RoleDisk {
			return path.Join(ubuntuReleaseDir(version), "SHA256SUMS")
		}
		return path.Join(ubuntuUnpackedDir(version), "SHA256SUMS")
	case "debian":
		return path.Join(debianDir(version), "SHA512SUMS")
	case "fedora":
		return path.Join(fedoraDir(version, a), fedoraChecksumName(version, a))
	}
	return ""
}

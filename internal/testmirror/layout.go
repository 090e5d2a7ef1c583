package testmirror

import (
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/vmprep/vmprep/pkg/image"
)

// FedoraCompose is the compose id of every Fedora image the mirror publishes.
// Real Fedora releases carry one (e.g. "1.4"); resolvers must discover it.
const FedoraCompose = "1.4"

// Default serials: each Ubuntu and Debian version is published as one build
// in its own directory unless WithSerials / WithDebianSerials say otherwise.
const (
	DefaultUbuntuSerial = "20261120"
	DefaultDebianSerial = "20261120-0815"
)

// debianCodenames maps Debian release numbers to codenames, as the real
// cloud.debian.org tree is laid out by codename.
var debianCodenames = map[string]string{"11": "bullseye", "12": "bookworm", "13": "trixie"}

func fedoraArch(a image.Arch) string {
	switch a {
	case image.ArchAMD64:
		return "x86_64"
	case image.ArchARM64:
		return "aarch64"
	}
	return string(a)
}

// Paths below are relative to the mirror root and mirror the real hosts'
// paths (cloud-images.ubuntu.com, cloud.debian.org, download.fedoraproject.org),
// so a catalog whose base URL is replaced by Mirror.URL resolves into them.
//
// Ubuntu and Debian publish every build in a directory of its own, named by
// its serial (releases/24.04/release-20261120/, images/cloud/bookworm/
// 20261120-0815/), plus a moving directory (release/, latest/) holding a
// copy of the newest build. A serial of "" names the moving directory.

// versionDir is the directory whose listing names a version's builds.
func versionDir(distro, v string) string {
	switch distro {
	case "ubuntu":
		return path.Join("releases", v)
	case "debian":
		return path.Join("images", "cloud", debianCodenames[v])
	}
	return ""
}

// buildDir is the directory of one build (serial "": the moving one).
func buildDir(distro, v, serial string) string {
	switch {
	case distro == "ubuntu" && serial == "":
		return path.Join(versionDir(distro, v), "release")
	case distro == "ubuntu":
		return path.Join(versionDir(distro, v), "release-"+serial)
	case distro == "debian" && serial == "":
		return path.Join(versionDir(distro, v), "latest")
	case distro == "debian":
		return path.Join(versionDir(distro, v), serial)
	}
	return ""
}

func ubuntuPrefix(v string, a image.Arch) string {
	return fmt.Sprintf("ubuntu-%s-server-cloudimg-%s", v, a)
}

// debianDiskName is the disk's name: dated builds carry the serial in it.
func debianDiskName(v, serial string, a image.Arch) string {
	if serial == "" {
		return fmt.Sprintf("debian-%s-genericcloud-%s.qcow2", v, a)
	}
	return fmt.Sprintf("debian-%s-genericcloud-%s-%s.qcow2", v, a, serial)
}

func fedoraDir(v string, a image.Arch) string {
	return path.Join("pub", "fedora", "linux", "releases", v, "Cloud", fedoraArch(a), "images")
}

func fedoraDiskName(v string, a image.Arch) string {
	return fmt.Sprintf("Fedora-Cloud-Base-Generic-%s-%s.%s.qcow2", v, FedoraCompose, fedoraArch(a))
}

func fedoraChecksumName(v string, a image.Arch) string {
	return fmt.Sprintf("Fedora-Cloud-%s-%s-%s-CHECKSUM", v, FedoraCompose, fedoraArch(a))
}

// assetPath returns the relative path of an asset of one build, or "" if
// the distro has no such asset.
func assetPath(distro, version, serial string, a image.Arch, role image.Role) string {
	switch distro {
	case "ubuntu":
		dir := buildDir(distro, version, serial)
		switch role {
		case image.RoleDisk:
			return path.Join(dir, ubuntuPrefix(version, a)+".img")
		case image.RoleKernel:
			return path.Join(dir, "unpacked", ubuntuPrefix(version, a)+"-vmlinuz-generic")
		case image.RoleInitramfs:
			return path.Join(dir, "unpacked", ubuntuPrefix(version, a)+"-initrd-generic")
		}
	case "debian":
		if role == image.RoleDisk {
			return path.Join(buildDir(distro, version, serial), debianDiskName(version, serial, a))
		}
	case "fedora":
		if role == image.RoleDisk {
			return path.Join(fedoraDir(version, a), fedoraDiskName(version, a))
		}
	}
	return ""
}

// manifestPath returns the relative path of the manifest that lists an asset.
func manifestPath(distro, version, serial string, a image.Arch, role image.Role) string {
	switch distro {
	case "ubuntu":
		if role == image.RoleDisk {
			return path.Join(buildDir(distro, version, serial), "SHA256SUMS")
		}
		return path.Join(buildDir(distro, version, serial), "unpacked", "SHA256SUMS")
	case "debian":
		return path.Join(buildDir(distro, version, serial), "SHA512SUMS")
	case "fedora":
		return path.Join(fedoraDir(version, a), fedoraChecksumName(version, a))
	}
	return ""
}

// movingName maps a file name of a dated build to its name in the moving
// directory (Debian drops the serial from names there; Ubuntu keeps them).
func movingName(distro, serial, name string) string {
	if distro == "debian" {
		return strings.Replace(name, "-"+serial+".", ".", 1)
	}
	return name
}

// serialTime is the date a serial starts with (noon UTC), or now.
func serialTime(serial string) time.Time {
	if len(serial) >= 8 {
		if t, err := time.Parse("20060102", serial[:8]); err == nil {
			return t.Add(12 * time.Hour)
		}
	}
	return time.Now().UTC().Truncate(time.Second)
}

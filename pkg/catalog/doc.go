// Package catalog turns an image name (distro, version, arch) into the assets
// that make it up: where each is published, which checksum manifest vouches
// for it and which key signs that manifest. It is pure: Plan does no I/O;
// package resolve fetches and verifies what a Plan describes. It knows
// nothing of NATS.
//
// Built-in images: ubuntu (disk, kernel and initramfs, detached-signed
// SHA256SUMS checked against the embedded Ubuntu cloud-image key), debian
// (disk only, unsigned SHA512SUMS: its Trust says so), fedora (disk only,
// clearsigned CHECKSUM discovered from the directory listing; vmprep does not
// ship Fedora's key, so WithKeyring or WithAllowUnsigned is required). alpine
// is known but unsupported (*UnsupportedError says why and what to do).
//
// # Catalog files
//
// WithFile adds images from a JSON (.json) or YAML (.yaml, .yml) file; an
// image for a distro already known replaces it. The built-in catalog
// (builtin.yaml) uses the same schema. Unknown fields are errors.
//
//	images:
//	  - distro: mydistro            # [a-z0-9][a-z0-9._-]{0,63}
//	    description: free text
//	    base_url: https://images.example.org/   # WithMirror replaces it
//	    versions: ["1", "2"]          # or version_pattern: '[0-9]+' (RE2, whole match)
//	    codenames: {"2": bravo}       # either spelling accepted; {codename}
//	    arches: {amd64: x86_64, arm64: aarch64}   # our name: theirs ({arch})
//	    boot_mode: kernel             # kernel (kernel [+ initramfs] + disk) | firmware (disk only)
//	    keyring: keys/mydistro.asc    # armored keys; relative to the catalog file,
//	                                  # or builtin:ubuntu-cloud-images
//	    key_help: where to get the key (shown when none is configured)
//	    assets:
//	      - role: disk                # disk | kernel | initramfs
//	        url: "{version}/{arch}/mydistro-{version}-{arch}.qcow2"
//	        name: optional name in the manifest (default: the url's last element)
//	        format: qcow2             # qcow2 | raw (disks only)
//	        manifest:
//	          url: "{version}/{arch}/SHA256SUMS"
//	          format: sums            # sums (GNU/BSD lines) | single (one digest for this file)
//	          signature: detached     # detached | clearsigned | none
//	          signature_url: "{version}/{arch}/SHA256SUMS.gpg"
//	          note: for signature none, why there is none (copied into Trust)
//	  - distro: otherdistro
//	    unsupported: {reason: why, instead: what to do}
//
// Placeholders: {distro}, {version} (canonical, never a codename),
// {codename}, {arch} (the distro's spelling), {serial} (images with
// serials) and, ending an asset url only,
// {name}. When a file name is not known in advance (Fedora's compose id),
// the asset url ends in {name} and name_pattern (an RE2 template, whole
// match; placeholder values are quoted) selects it among the manifest's
// entries; a manifest may likewise be found by index (a directory URL ending
// in "/") and pattern. Among several matches the greatest in natural order
// (numbers compared numerically) wins.
//
// Serials: a distribution that publishes every build in a directory of its
// own that never changes (Ubuntu's releases/24.04/release-20260926/,
// Debian's images/cloud/bookworm/20260901-2211/) describes it in a serials
// section (index: the listing naming the builds; directory: a build's
// subdirectory name with {serial}; pattern: RE2 for a serial), and every
// asset and manifest template then uses {serial}. Plan needs a spec with a
// Serial for such an image; Serials says where to list them (package
// resolve lists them and picks the newest).
//
//	serials:
//	  index: releases/{version}/
//	  directory: release-{serial}
//	  pattern: '[0-9]{8}(\.[0-9]+)?'
//
// Templates are relative to base_url: no scheme, no leading "/", no "." or
// ".." segments, no query. Spec values are restricted to a safe character
// set, so an expanded URL never leaves base_url.
//
// Trust: a detached or clearsigned manifest must verify against the image's
// keyring (or the one WithKeyring sets for every image) before any entry is
// used. With no keyring the plan fails with ErrNoTrustedKey unless
// WithAllowUnsigned is set. "none" resolves with Trust.Signed false and the
// note.
package catalog

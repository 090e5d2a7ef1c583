// Package keys holds the pinned OpenPGP trust anchors compiled into vmprep.
// Keys are embedded, never fetched at run time: changing one is a code change
// that the fingerprint test in package signature makes visible.
package keys

import _ "embed"

// A string, not a []byte, so no caller can modify the trust anchor in place.
//
//go:embed ubuntu-cloudimage-keyring.asc
var ubuntuCloudImage string

// UbuntuCloudImage returns a fresh copy of the armored Ubuntu cloud-image
// keyring: the key that signs releases/<ver>/release/SHA256SUMS.gpg
// (D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81) and the one that signs the
// simplestreams .sjson files (4A3CE3CD565D7EB5C810E2B97FF3F408476CF100).
func UbuntuCloudImage() []byte { return []byte(ubuntuCloudImage) }

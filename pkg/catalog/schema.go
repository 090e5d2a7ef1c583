package catalog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/vmprep/vmprep/pkg/image"

	"go.yaml.in/yaml/v3"
)

// File is the top level of a catalog file (see the package documentation
// and docs/catalog.md for the schema). The built-in catalog uses it too.
type File struct {
	Images []Image `json:"images" yaml:"images"`
}

// Image describes how one distribution publishes its cloud images. URL
// fields are templates relative to BaseURL; see the package documentation
// for the placeholders.
type Image struct {
	// Distro is the name users type ("ubuntu").
	Distro      string `json:"distro" yaml:"distro"`
	Description string `json:"description,omitempty" yaml:"description,omitempty"`
	// BaseURL is the absolute http(s) URL templates are relative to;
	// WithMirror replaces it for every image.
	BaseURL string `json:"base_url,omitempty" yaml:"base_url,omitempty"`
	// Versions lists the accepted versions; VersionPattern (an RE2 regexp
	// matched against the whole version) accepts a family instead. With
	// neither, any well-formed version is tried.
	Versions       []string `json:"versions,omitempty" yaml:"versions,omitempty"`
	VersionPattern string   `json:"version_pattern,omitempty" yaml:"version_pattern,omitempty"`
	// Codenames maps versions to codenames ("12": "bookworm"); either
	// spelling is accepted and {codename} expands to the codename.
	Codenames map[string]string `json:"codenames,omitempty" yaml:"codenames,omitempty"`
	// Arches maps our architecture names to the distro's ({arch}), e.g.
	// amd64: x86_64. Only listed architectures resolve.
	Arches   map[image.Arch]string `json:"arches,omitempty" yaml:"arches,omitempty"`
	BootMode BootMode              `json:"boot_mode,omitempty" yaml:"boot_mode,omitempty"`
	// Keyring is the armored OpenPGP keyring that signs the manifests: a
	// file path (relative to the catalog file) or "builtin:ubuntu-cloud-images".
	Keyring string `json:"keyring,omitempty" yaml:"keyring,omitempty"`
	// KeyHelp tells users where to get the signing key when none is configured.
	KeyHelp string `json:"key_help,omitempty" yaml:"key_help,omitempty"`
	// Serials says where each build of a version is published in its own
	// directory that never changes (Ubuntu's release-<serial>/). With it,
	// every asset and manifest template must use {serial}, so nothing is
	// ever fetched from a directory that is repointed to newer builds.
	Serials *SerialsTemplate `json:"serials,omitempty" yaml:"serials,omitempty"`
	Assets  []AssetTemplate  `json:"assets,omitempty" yaml:"assets,omitempty"`
	// Unsupported marks a distro that is known but cannot be prepared.
	Unsupported *Unsupported `json:"unsupported,omitempty" yaml:"unsupported,omitempty"`
}

// Unsupported says why a distro cannot be prepared and what to do instead.
type Unsupported struct {
	Reason  string `json:"reason" yaml:"reason"`
	Instead string `json:"instead,omitempty" yaml:"instead,omitempty"`
}

// AssetTemplate describes one asset of an image.
type AssetTemplate struct {
	Role image.Role `json:"role" yaml:"role"`
	// URL is the asset's path template. When the file name is not known in
	// advance it ends in "{name}" and NamePattern selects the name among the
	// manifest's entries.
	URL string `json:"url" yaml:"url"`
	// Name is the file name the manifest lists; default: the URL's last element.
	Name string `json:"name,omitempty" yaml:"name,omitempty"`
	// NamePattern is an RE2 template matched against whole manifest entry
	// names; the greatest match in natural order wins.
	NamePattern string           `json:"name_pattern,omitempty" yaml:"name_pattern,omitempty"`
	Format      image.DiskFormat `json:"format,omitempty" yaml:"format,omitempty"`
	Manifest    ManifestTemplate `json:"manifest" yaml:"manifest"`
}

// SerialsTemplate describes a distribution's per-build directories.
type SerialsTemplate struct {
	// Index is the directory (a template ending in "/") whose HTML listing
	// names one subdirectory per build, e.g. "releases/{version}/".
	Index string `json:"index" yaml:"index"`
	// Directory is such a subdirectory's name, {serial} standing for the
	// serial: "release-{serial}" (Ubuntu) or "{serial}" (Debian).
	Directory string `json:"directory" yaml:"directory"`
	// Pattern is an RE2 regexp a serial must match as a whole, e.g.
	// '[0-9]{8}(\.[0-9]+)?'. Serials are ordered naturally (numbers
	// compared as numbers); the greatest is the newest.
	Pattern string `json:"pattern" yaml:"pattern"`
	// Unpinned, when set, names the directory a mirror in the classic
	// layout holds instead of the per-build ones: "release" (Ubuntu's
	// release/, repointed at each publication). A listing with no build
	// directory but this one is read from it, each template's Directory
	// segment replaced by Unpinned.
	Unpinned string `json:"unpinned,omitempty" yaml:"unpinned,omitempty"`
	// BuildInfo is a file under the unpinned directory whose "serial=" line
	// names the build it holds ("unpacked/build-info.txt"); without it, or
	// when a mirror lacks the file, such a build is unpinned.
	BuildInfo string `json:"build_info,omitempty" yaml:"build_info,omitempty"`
}

// SignatureKind is how a checksum manifest is signed.
type SignatureKind string

// Signature kinds.
const (
	// SignatureDetached: a separate OpenPGP signature file (armored or binary).
	SignatureDetached SignatureKind = "detached"
	// SignatureClearsigned: the manifest is an OpenPGP clearsigned message.
	SignatureClearsigned SignatureKind = "clearsigned"
	// SignatureNone: the distribution publishes no signature.
	SignatureNone SignatureKind = "none"
)

// ManifestFormat hints how to parse a manifest.
type ManifestFormat string

// Manifest formats.
const (
	// ManifestSums: GNU or BSD-tag checksum lines (SHA256SUMS, CHECKSUM, …).
	ManifestSums ManifestFormat = "sums"
	// ManifestSingle: a per-file checksum file with one digest for the asset.
	ManifestSingle ManifestFormat = "single"
)

// ManifestTemplate describes the checksum manifest that lists an asset.
// Exactly one of URL, or Index with Pattern, is set.
type ManifestTemplate struct {
	URL string `json:"url,omitempty" yaml:"url,omitempty"`
	// Index is a directory URL (ending in "/") whose HTML listing holds the
	// manifest; Pattern (RE2 template) selects its file name, the greatest
	// match in natural order winning.
	Index   string         `json:"index,omitempty" yaml:"index,omitempty"`
	Pattern string         `json:"pattern,omitempty" yaml:"pattern,omitempty"`
	Format  ManifestFormat `json:"format,omitempty" yaml:"format,omitempty"`
	// Signature is detached, clearsigned or none.
	Signature SignatureKind `json:"signature" yaml:"signature"`
	// SignatureURL is the detached signature's template.
	SignatureURL string `json:"signature_url,omitempty" yaml:"signature_url,omitempty"`
	// Note explains, for Signature none, why there is no signature; it is
	// copied into the resolved assets' Trust.
	Note string `json:"note,omitempty" yaml:"note,omitempty"`
}

// builtinUbuntuKeyring names the embedded Ubuntu cloud-image keyring.
const builtinUbuntuKeyring = "builtin:ubuntu-cloud-images"

// maxCatalogFileSize caps a catalog file; real ones are a few KiB.
const maxCatalogFileSize = 1 << 20

// ParseFile decodes a catalog file. format is "json" or "yaml"; unknown
// fields are errors so that typos do not silently change trust settings.
func ParseFile(data []byte, format string) (File, error) {
	var f File
	switch format {
	case "json":
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			return File{}, fmt.Errorf("%w: JSON: %w", ErrInvalidCatalog, err)
		}
		if dec.More() {
			return File{}, fmt.Errorf("%w: JSON: trailing data after the top-level object", ErrInvalidCatalog)
		}
	case "yaml":
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&f); err != nil {
			if errors.Is(err, io.EOF) {
				return File{}, fmt.Errorf("%w: YAML: empty document", ErrInvalidCatalog)
			}
			return File{}, fmt.Errorf("%w: YAML: %w", ErrInvalidCatalog, err)
		}
	default:
		return File{}, fmt.Errorf("%w: unknown catalog format %q (want json or yaml)", ErrInvalidCatalog, format)
	}
	if len(f.Images) == 0 {
		return File{}, fmt.Errorf("%w: no images", ErrInvalidCatalog)
	}
	return f, nil
}

// readCatalogFile reads and decodes a catalog file, choosing the format by
// extension (.json, .yaml, .yml).
func readCatalogFile(p string) (File, error) {
	var format string
	switch strings.ToLower(filepath.Ext(p)) {
	case ".json":
		format = "json"
	case ".yaml", ".yml":
		format = "yaml"
	default:
		return File{}, fmt.Errorf("%w: %s: unknown extension (want .json, .yaml or .yml)", ErrInvalidCatalog, p)
	}
	fh, err := os.Open(p)
	if err != nil {
		return File{}, fmt.Errorf("catalog file: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxCatalogFileSize+1))
	if err != nil {
		return File{}, fmt.Errorf("catalog file %s: %w", p, err)
	}
	if len(data) > maxCatalogFileSize {
		return File{}, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalidCatalog, p, maxCatalogFileSize)
	}
	f, err := ParseFile(data, format)
	if err != nil {
		return File{}, fmt.Errorf("%s: %w", p, err)
	}
	return f, nil
}

// placeholders each template kind may use.
var (
	pathVars    = []string{"distro", "version", "codename", "arch", "serial"}
	assetVars   = []string{"distro", "version", "codename", "arch", "serial", "name"}
	placeholder = regexp.MustCompile(`\{[^{}]*\}`)
)

// validate checks an image description and fills defaults.
func (img *Image) validate() error {
	d, err := image.CheckName("distro", img.Distro)
	if err != nil {
		return err
	}
	img.Distro = d
	if img.Unsupported != nil {
		if strings.TrimSpace(img.Unsupported.Reason) == "" {
			return errors.New("unsupported: reason is empty")
		}
		return nil
	}
	if err := checkBaseURL(img.BaseURL); err != nil {
		return fmt.Errorf("base_url: %w", err)
	}
	for _, v := range img.Versions {
		if _, err := image.CheckName("version", v); err != nil {
			return fmt.Errorf("versions: %w", err)
		}
	}
	if img.VersionPattern != "" {
		if _, err := regexp.Compile(`^(?:` + img.VersionPattern + `)$`); err != nil {
			return fmt.Errorf("version_pattern: %w", err)
		}
	}
	for v, c := range img.Codenames {
		if _, err := image.CheckName("codenames key", v); err != nil {
			return err
		}
		if _, err := image.CheckName("codename", c); err != nil {
			return err
		}
	}
	if len(img.Arches) == 0 {
		return errors.New("arches: empty")
	}
	for a, name := range img.Arches {
		if pa, err := image.ParseArch(string(a)); err != nil || pa != a {
			return fmt.Errorf("arches: key %q must be amd64 or arm64", a)
		}
		if _, err := image.CheckName("arch name", name); err != nil {
			return fmt.Errorf("arches: %w", err)
		}
	}
	switch img.BootMode {
	case BootKernel, BootFirmware:
	default:
		return fmt.Errorf("boot_mode %q: want %q or %q", img.BootMode, BootKernel, BootFirmware)
	}
	if len(img.Assets) == 0 {
		return errors.New("assets: empty")
	}
	roles := map[image.Role]bool{}
	for i := range img.Assets {
		a := &img.Assets[i]
		if err := a.validate(); err != nil {
			return fmt.Errorf("assets[%d] (%s): %w", i, a.Role, err)
		}
		if roles[a.Role] {
			return fmt.Errorf("assets[%d]: role %s listed twice", i, a.Role)
		}
		roles[a.Role] = true
	}
	if err := img.validateSerials(); err != nil {
		return err
	}
	switch {
	case !roles[image.RoleDisk]:
		return errors.New("assets: no disk")
	case img.BootMode == BootKernel && !roles[image.RoleKernel]:
		return errors.New("boot_mode kernel needs a kernel asset")
	case img.BootMode == BootFirmware && (roles[image.RoleKernel] || roles[image.RoleInitramfs]):
		return errors.New("boot_mode firmware takes no kernel or initramfs asset")
	}
	return nil
}

// serialDirRE is what a serials.directory may hold around its {serial}.
var serialDirRE = regexp.MustCompile(`^[A-Za-z0-9._-]*\{serial\}[A-Za-z0-9._-]*$`)

// validateSerials checks the serials section, and that templates use
// {serial} exactly when the image has one.
func (img *Image) validateSerials() error {
	const ph = "{serial}"
	var used []string
	for i, a := range img.Assets {
		m := a.Manifest
		for _, t := range []string{a.URL, a.NamePattern, m.URL, m.Index, m.Pattern, m.SignatureURL} {
			if strings.Contains(t, ph) {
				used = append(used, fmt.Sprintf("assets[%d]", i))
				break
			}
		}
	}
	sr := img.Serials
	if sr == nil {
		if len(used) > 0 {
			return fmt.Errorf("%s use {serial} but the image has no serials section", strings.Join(used, ", "))
		}
		return nil
	}
	if err := checkTemplate(sr.Index, pathVars); err != nil {
		return fmt.Errorf("serials: index: %w", err)
	}
	switch {
	case !strings.HasSuffix(sr.Index, "/"):
		return errors.New("serials: index: must end in /")
	case strings.Contains(sr.Index, ph):
		return errors.New("serials: index: cannot use {serial} (it lists the serials)")
	case !serialDirRE.MatchString(sr.Directory):
		return fmt.Errorf("serials: directory %q: want one {serial} with [A-Za-z0-9._-] around it", sr.Directory)
	case sr.Pattern == "":
		return errors.New("serials: pattern is empty")
	}
	if _, err := regexp.Compile(`^(?:` + sr.Pattern + `)$`); err != nil {
		return fmt.Errorf("serials: pattern: %w", err)
	}
	if err := sr.validateUnpinned(img.Assets); err != nil {
		return err
	}
	for i, a := range img.Assets {
		// Every file must come from the serial's directory: a template
		// without {serial} would fetch from one that changes under us.
		if !strings.Contains(a.URL, ph) {
			return fmt.Errorf("assets[%d] (%s): url does not use {serial}, so it would be fetched from a directory that changes", i, a.Role)
		}
		if m := a.Manifest; !strings.Contains(m.URL+m.Index, ph) || (m.SignatureURL != "" && !strings.Contains(m.SignatureURL, ph)) {
			return fmt.Errorf("assets[%d] (%s): manifest or signature does not use {serial}, so it would be fetched from a directory that changes", i, a.Role)
		}
	}
	return nil
}

// unpinnedDirRE is what a serials.unpinned directory name may be.
var unpinnedDirRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]*$`)

// validateUnpinned checks the classic-layout fallback: a plain directory
// name, a relative build_info path, and templates whose every {serial} lies
// in the build directory's segment, so that nothing is left to expand.
func (sr *SerialsTemplate) validateUnpinned(assets []AssetTemplate) error {
	if sr.Unpinned == "" {
		if sr.BuildInfo != "" {
			return errors.New("serials: build_info needs unpinned")
		}
		return nil
	}
	if !unpinnedDirRE.MatchString(sr.Unpinned) {
		return fmt.Errorf("serials: unpinned %q: want a directory name of [A-Za-z0-9._-]", sr.Unpinned)
	}
	if sr.BuildInfo != "" {
		if err := checkTemplate(sr.BuildInfo, nil); err != nil {
			return fmt.Errorf("serials: build_info: %w", err)
		}
	}
	for i, a := range assets {
		m := a.Manifest
		for _, t := range []string{a.URL, a.NamePattern, m.URL, m.Index, m.Pattern, m.SignatureURL} {
			if strings.Contains(sr.unpinnedTemplate(t), "{serial}") {
				return fmt.Errorf("serials: unpinned: assets[%d] (%s) uses {serial} outside the %s directory, so it cannot be read from %s/", i, a.Role, sr.Directory, sr.Unpinned)
			}
		}
	}
	return nil
}

// unpinnedTemplate rewrites a path template to read from the unpinned
// directory: each segment that is the build directory becomes Unpinned.
func (sr *SerialsTemplate) unpinnedTemplate(t string) string {
	segs := strings.Split(t, "/")
	for i, s := range segs {
		if s == sr.Directory {
			segs[i] = sr.Unpinned
		}
	}
	return strings.Join(segs, "/")
}

func (a *AssetTemplate) validate() error {
	switch a.Role {
	case image.RoleDisk:
		switch a.Format {
		case "":
			a.Format = image.FormatQCOW2
		case image.FormatQCOW2, image.FormatRaw:
		default:
			return fmt.Errorf("format %q: want %q or %q", a.Format, image.FormatQCOW2, image.FormatRaw)
		}
	case image.RoleKernel, image.RoleInitramfs:
		if a.Format != "" {
			return errors.New("format is only for disks")
		}
	default:
		return fmt.Errorf("role %q: want disk, kernel or initramfs", a.Role)
	}
	if err := checkTemplate(a.URL, assetVars); err != nil {
		return fmt.Errorf("url: %w", err)
	}
	byPattern := strings.HasSuffix(a.URL, "{name}")
	switch {
	case strings.Count(a.URL, "{name}") > 1 || (strings.Contains(a.URL, "{name}") && !byPattern):
		return errors.New("url: {name} may only end the template")
	case byPattern && a.NamePattern == "":
		return errors.New("url ends in {name} but name_pattern is empty")
	case !byPattern && a.NamePattern != "":
		return errors.New("name_pattern needs a url ending in {name}")
	case byPattern && a.Name != "":
		return errors.New("name and name_pattern are exclusive")
	}
	if a.NamePattern != "" {
		if err := checkPattern(a.NamePattern); err != nil {
			return fmt.Errorf("name_pattern: %w", err)
		}
	}
	if a.Name != "" && (strings.ContainsAny(a.Name, "\x00\n\r") || a.Name != strings.TrimSpace(a.Name)) {
		return fmt.Errorf("name %q: control characters or surrounding space", a.Name)
	}
	if err := a.Manifest.validate(); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if a.Manifest.Format == ManifestSingle && (a.NamePattern != "" || a.Manifest.URL == "") {
		return errors.New("a single-file manifest needs a fixed asset name and manifest url")
	}
	return nil
}

func (m *ManifestTemplate) validate() error {
	switch {
	case m.URL != "" && (m.Index != "" || m.Pattern != ""):
		return errors.New("url and index/pattern are exclusive")
	case m.URL != "":
		if err := checkTemplate(m.URL, pathVars); err != nil {
			return fmt.Errorf("url: %w", err)
		}
	case m.Index != "" && m.Pattern != "":
		if err := checkTemplate(m.Index, pathVars); err != nil {
			return fmt.Errorf("index: %w", err)
		}
		if !strings.HasSuffix(m.Index, "/") {
			return errors.New("index: must end in /")
		}
		if err := checkPattern(m.Pattern); err != nil {
			return fmt.Errorf("pattern: %w", err)
		}
	default:
		return errors.New("needs url, or index and pattern")
	}
	switch m.Format {
	case "":
		m.Format = ManifestSums
	case ManifestSums, ManifestSingle:
	default:
		return fmt.Errorf("format %q: want %q or %q", m.Format, ManifestSums, ManifestSingle)
	}
	switch m.Signature {
	case SignatureDetached:
		if err := checkTemplate(m.SignatureURL, pathVars); err != nil {
			return fmt.Errorf("signature_url: %w", err)
		}
	case SignatureClearsigned, SignatureNone:
		if m.SignatureURL != "" {
			return fmt.Errorf("signature_url is only for detached signatures, not %s", m.Signature)
		}
	default:
		return fmt.Errorf("signature %q: want detached, clearsigned or none", m.Signature)
	}
	return nil
}

func checkBaseURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http(s) URL", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q: query, fragment and user info are not allowed", s)
	}
	return nil
}

// checkTemplate validates a relative path template: no scheme, no leading
// slash, no "..", only known placeholders.
func checkTemplate(t string, allowed []string) error {
	switch {
	case t == "":
		return errors.New("empty")
	case strings.HasPrefix(t, "/") || strings.Contains(t, "://") || strings.Contains(t, "\\"):
		return fmt.Errorf("%q must be relative to base_url", t)
	case strings.ContainsAny(t, "?#\x00\r\n\t "):
		return fmt.Errorf("%q holds a query, fragment, space or control character", t)
	}
	for _, seg := range strings.Split(t, "/") {
		if seg == ".." || seg == "." {
			return fmt.Errorf("%q has a %q segment", t, seg)
		}
	}
	for _, ph := range placeholder.FindAllString(t, -1) {
		if !slices.Contains(allowed, ph[1:len(ph)-1]) {
			return fmt.Errorf("%q: unknown placeholder %s (known: %s)", t, ph, strings.Join(allowed, ", "))
		}
	}
	if strings.Count(t, "{") != strings.Count(t, "}") || strings.Count(t, "{") != len(placeholder.FindAllString(t, -1)) {
		return fmt.Errorf("%q: unbalanced braces", t)
	}
	return nil
}

func checkPattern(p string) error {
	// Braces that are not placeholders are regexp repetitions like {2}.
	_, err := regexp.Compile(`^(?:` + expand(p, map[string]string{"distro": "d", "version": "1", "codename": "c", "arch": "a", "serial": "s"}, regexp.QuoteMeta) + `)$`)
	return err
}

// expand replaces known {placeholders}; quote escapes values (for regexps).
// Unknown braces are kept, so regexp repetitions such as {2} survive.
func expand(t string, vars map[string]string, quote func(string) string) string {
	return placeholder.ReplaceAllStringFunc(t, func(ph string) string {
		v, ok := vars[ph[1:len(ph)-1]]
		if !ok {
			return ph
		}
		if quote != nil {
			return quote(v)
		}
		return v
	})
}

// joinURL resolves an expanded relative path against a base URL ending in "/".
func joinURL(base, rel string) string {
	return strings.TrimSuffix(base, "/") + "/" + path.Clean("/" + rel)[1:] + trailingSlash(rel)
}

func trailingSlash(rel string) string {
	if strings.HasSuffix(rel, "/") && rel != "/" {
		return "/"
	}
	return ""
}

package catalog

import (
	"bytes"
	_ "embed"
	"fmt"
	"maps"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/vmprep/vmprep/pkg/image"

	"github.com/vmprep/vmprep/pkg/signature"
)

//go:embed builtin.yaml
var builtinYAML []byte

// Option configures New.
type Option func(*config)

type config struct {
	mirror        string
	files         []string
	keyring       *signature.Keyring
	allowUnsigned bool
}

// WithMirror replaces the base URL of every image with baseURL (e.g. a
// local mirror "http://127.0.0.1:8080/"), keeping each image's paths.
func WithMirror(baseURL string) Option {
	return func(c *config) { c.mirror = baseURL }
}

// WithFile adds the images of a user catalog file (.json, .yaml or .yml).
// An image whose distro is already known replaces that entry. Files apply
// in the order given.
func WithFile(path string) Option {
	return func(c *config) { c.files = append(c.files, path) }
}

// WithKeyring replaces the trusted keys of every image: signed manifests
// must be signed by a key in k (e.g. a mirror's key, or Fedora's key).
// A nil k keeps each image's own keys.
func WithKeyring(k *signature.Keyring) Option {
	return func(c *config) { c.keyring = k }
}

// WithAllowUnsigned lets images whose signing key is not configured resolve
// without signature verification; the resolver warns and marks their Trust
// unsigned. Where a key is configured it changes nothing: a bad signature
// and a missing one (which an attacker could arrange) are still refused.
func WithAllowUnsigned(allow bool) Option {
	return func(c *config) { c.allowUnsigned = allow }
}

// Catalog maps image specs to plans. It is immutable and safe for concurrent use.
type Catalog struct {
	entries       map[string]*entry
	allowUnsigned bool
}

type entry struct {
	Image
	versionRE     *regexp.Regexp
	serialRE      *regexp.Regexp
	keyring       *signature.Keyring
	keyringSource string
	// hash is the entry's content hash as parsed (TrustRoots.Catalog).
	hash string
}

// New builds a catalog from the built-in images and the options.
func New(opts ...Option) (*Catalog, error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.mirror != "" {
		if err := checkBaseURL(cfg.mirror); err != nil {
			return nil, fmt.Errorf("%w: mirror: %w", ErrInvalidCatalog, err)
		}
	}
	c := &Catalog{entries: map[string]*entry{}, allowUnsigned: cfg.allowUnsigned}

	builtin, err := ParseFile(builtinYAML, "yaml")
	if err != nil {
		return nil, fmt.Errorf("built-in catalog: %w", err)
	}
	if err := c.add(builtin, "built-in catalog", ""); err != nil {
		return nil, err
	}
	for _, p := range cfg.files {
		f, err := readCatalogFile(p)
		if err != nil {
			return nil, err
		}
		if err := c.add(f, p, filepath.Dir(p)); err != nil {
			return nil, err
		}
	}
	for _, e := range c.entries {
		if e.Unsupported != nil {
			continue
		}
		if cfg.mirror != "" {
			e.BaseURL = cfg.mirror
		}
		if cfg.keyring != nil {
			e.keyring, e.keyringSource = cfg.keyring, "the configured keyring"
		}
	}
	return c, nil
}

// add validates and installs the images of f; dir resolves relative keyring paths.
func (c *Catalog) add(f File, source, dir string) error {
	seen := map[string]bool{}
	for i, img := range f.Images {
		if err := img.validate(); err != nil {
			return fmt.Errorf("%w: %s: images[%d] %s: %w", ErrInvalidCatalog, source, i, image.Printable(img.Distro), err)
		}
		if seen[img.Distro] {
			return fmt.Errorf("%w: %s: images[%d]: distro %s listed twice", ErrInvalidCatalog, source, i, img.Distro)
		}
		seen[img.Distro] = true
		hash, err := entryHash(img)
		if err != nil {
			return err
		}
		e := &entry{Image: img, hash: hash}
		if !strings.HasSuffix(e.BaseURL, "/") && e.BaseURL != "" {
			e.BaseURL += "/"
		}
		if img.VersionPattern != "" {
			e.versionRE = regexp.MustCompile(`^(?:` + img.VersionPattern + `)$`) // validated above
		}
		if img.Serials != nil {
			e.serialRE = regexp.MustCompile(`^(?:` + img.Serials.Pattern + `)$`) // validated above
		}
		switch k := img.Keyring; {
		case k == "":
		case k == builtinUbuntuKeyring:
			e.keyring, e.keyringSource = signature.UbuntuCloudImages(), "the built-in Ubuntu cloud-image keyring"
		case strings.HasPrefix(k, "builtin:"):
			return fmt.Errorf("%w: %s: images[%d] %s: unknown built-in keyring %q (known: %s)", ErrInvalidCatalog, source, i, img.Distro, k, builtinUbuntuKeyring)
		default:
			p := k
			if !filepath.IsAbs(p) && dir != "" {
				p = filepath.Join(dir, p)
			}
			kr, err := signature.LoadKeyringFile(p)
			if err != nil {
				return fmt.Errorf("%w: %s: images[%d] %s: keyring: %w", ErrInvalidCatalog, source, i, img.Distro, err)
			}
			e.keyring, e.keyringSource = kr, "keyring file "+p
		}
		c.entries[img.Distro] = e
	}
	return nil
}

// Distros lists the distros that can be resolved, sorted.
func (c *Catalog) Distros() []string {
	var out []string
	for name, e := range c.entries {
		if e.Unsupported == nil {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Plan is what resolving a spec involves, computed without network access.
type Plan struct {
	// Spec is the normalized spec, with the version in canonical spelling
	// (a codename becomes its number).
	Spec     image.Spec
	BootMode BootMode
	Assets   []PlannedAsset
	// AllowUnsigned is set when the catalog allows unsigned resolution.
	AllowUnsigned bool
}

// PlannedAsset is one asset to resolve.
type PlannedAsset struct {
	Role image.Role
	// Name is the file name the manifest lists. It is empty when the name is
	// discovered: then NamePattern matches it among the manifest's entries
	// and URL is the directory the name is appended to.
	Name        string
	NamePattern *regexp.Regexp
	URL         string
	Format      image.DiskFormat
	Manifest    ManifestPlan
}

// URLFor returns the asset's URL given its manifest name.
func (a PlannedAsset) URLFor(name string) string {
	if a.Name != "" {
		return a.URL
	}
	return a.URL + pathEscape(name)
}

// ManifestPlan is the checksum manifest that vouches for an asset.
type ManifestPlan struct {
	// URL of the manifest; empty when it is discovered: then the HTML listing
	// at IndexURL is searched for a file name matching Pattern.
	URL      string
	IndexURL string
	Pattern  *regexp.Regexp
	Format   ManifestFormat
	// Signature is how the manifest is signed; SignatureURL is the detached
	// signature's URL.
	Signature    SignatureKind
	SignatureURL string
	// Keyring holds the keys trusted to sign it; nil only when the catalog
	// allows unsigned resolution and no key is configured.
	Keyring       *signature.Keyring
	KeyringSource string
	// UnsignedNote explains a manifest that is not signed (Signature none).
	UnsignedNote string
}

// ID identifies the manifest, so assets sharing one fetch it once.
func (m ManifestPlan) ID() string {
	if m.URL != "" {
		return m.URL
	}
	return m.IndexURL + "#" + m.Pattern.String()
}

// Canonical validates spec against the catalog and returns it in canonical
// form: normalized (image.Spec.Normalize), the version in canonical spelling
// (a codename becomes its number), the serial kept. A codename and its
// number are one image: everything stored or linked is keyed by this form.
// It fails for unknown or unsupported distros, unknown versions, arches the
// distro does not publish, and a serial for a distro without serials.
func (c *Catalog) Canonical(spec image.Spec) (image.Spec, error) {
	s, _, err := c.canonical(spec)
	return s, err
}

func (c *Catalog) canonical(spec image.Spec) (image.Spec, *entry, error) {
	s, err := spec.Normalize()
	if err != nil {
		return image.Spec{}, nil, fmt.Errorf("catalog: %w", err)
	}
	e, ok := c.entries[s.Distro]
	if !ok {
		return image.Spec{}, nil, &UnknownDistroError{Distro: s.Distro, Supported: c.Distros()}
	}
	if u := e.Unsupported; u != nil {
		return image.Spec{}, nil, &UnsupportedError{Distro: s.Distro, Reason: u.Reason, Instead: u.Instead}
	}
	if s.Version, err = e.canonicalVersion(s.Version); err != nil {
		return image.Spec{}, nil, err
	}
	if _, ok := e.Arches[s.Arch]; !ok {
		return image.Spec{}, nil, fmt.Errorf("catalog: %s %s: %w %s (available: %s)", s.Distro, s.Version, ErrUnsupportedArch, s.Arch, strings.Join(e.archList(), ", "))
	}
	if s.Serial != "" {
		if e.serialRE == nil {
			return image.Spec{}, nil, fmt.Errorf("catalog: %s: %w: %s publishes each build under the same name, so a serial cannot be pinned (drop the serial)", s, ErrNoSerials, s.Distro)
		}
		if !e.serialRE.MatchString(s.Serial) {
			return image.Spec{}, nil, fmt.Errorf("catalog: %s: %w: serial %q is not a %s serial (they match %s)", s, ErrInvalidSpec, s.Serial, s.Distro, e.Serials.Pattern)
		}
	}
	return s, e, nil
}

// SerialSource is where the serials of one image are listed.
type SerialSource struct {
	// Spec is the canonical spec, without a serial.
	Spec image.Spec
	// IndexURL is the directory whose HTML listing names a subdirectory per serial.
	IndexURL string
	// Unpinned is the directory name a mirror in the classic layout holds
	// instead of build directories ("release"), and UnpinnedURL its URL;
	// empty when the catalog names none.
	Unpinned    string
	UnpinnedURL string
	// BuildInfoURL is the file under UnpinnedURL whose "serial=" line names
	// the build it holds; empty when the catalog names none.
	BuildInfoURL string
	dir          *regexp.Regexp
	serial       *regexp.Regexp
}

// ValidSerial reports whether s has the catalog's serial form (and passes
// image.CheckSerial): e.g. a serial a build-info file claims.
func (s SerialSource) ValidSerial(serial string) bool {
	return s.serial != nil && s.serial.MatchString(serial) && image.CheckSerial(serial) == nil
}

// Serial returns the serial a listed subdirectory name (without its
// trailing "/") stands for, if it is one: its name has the catalog's form
// and the serial matches the catalog's pattern and image.CheckSerial.
func (s SerialSource) Serial(dirName string) (string, bool) {
	m := s.dir.FindStringSubmatch(dirName)
	if m == nil || image.CheckSerial(m[1]) != nil {
		return "", false
	}
	return m[1], true
}

// Serials returns where the serials of spec's version are listed, or an
// error wrapping ErrNoSerials if its catalog entry publishes none.
func (c *Catalog) Serials(spec image.Spec) (SerialSource, error) {
	spec.Serial = ""
	s, e, err := c.canonical(spec)
	if err != nil {
		return SerialSource{}, err
	}
	if e.Serials == nil {
		return SerialSource{}, fmt.Errorf("catalog: %s: %w: %s publishes each build under the same name", s, ErrNoSerials, s.Distro)
	}
	vars := e.vars(s)
	if err := needVars(vars, e.Serials.Index); err != nil {
		return SerialSource{}, fmt.Errorf("catalog: %s: serials: %w", s, err)
	}
	prefix, suffix, _ := strings.Cut(e.Serials.Directory, "{serial}")
	src := SerialSource{
		Spec:     s,
		IndexURL: joinURL(e.BaseURL, expand(e.Serials.Index, vars, nil)),
		dir:      regexp.MustCompile(`^` + regexp.QuoteMeta(prefix) + `(` + e.Serials.Pattern + `)` + regexp.QuoteMeta(suffix) + `$`), // validated
		serial:   e.serialRE,
	}
	if u := e.Serials.Unpinned; u != "" {
		src.Unpinned, src.UnpinnedURL = u, src.IndexURL+u+"/"
		if e.Serials.BuildInfo != "" {
			src.BuildInfoURL = src.UnpinnedURL + e.Serials.BuildInfo
		}
	}
	return src, nil
}

// PlanUnpinned plans spec from the directory a mirror in the classic layout
// holds instead of build directories (serials.unpinned, Ubuntu's release/),
// which is repointed at each publication: the caller must check that the
// build did not change while it read (the build-info serial, if any).
// spec.Serial, if set, is kept as the plan's label (the serial the build
// says it is); it is not part of any URL. Images without an unpinned
// directory fail with an error wrapping ErrNoSerials.
func (c *Catalog) PlanUnpinned(spec image.Spec) (Plan, error) {
	serial := spec.Serial
	spec.Serial = ""
	s, e, err := c.canonical(spec)
	if err != nil {
		return Plan{}, err
	}
	if e.Serials == nil || e.Serials.Unpinned == "" {
		return Plan{}, fmt.Errorf("catalog: %s: %w: the catalog names no unpinned directory for %s", s, ErrNoSerials, s.Distro)
	}
	vars := e.vars(s)
	s.Serial = serial
	p := Plan{Spec: s, BootMode: e.BootMode, AllowUnsigned: c.allowUnsigned}
	sr := e.Serials
	for _, at := range e.Assets {
		at.URL, at.NamePattern = sr.unpinnedTemplate(at.URL), sr.unpinnedTemplate(at.NamePattern)
		m := &at.Manifest
		m.URL, m.Index, m.Pattern, m.SignatureURL = sr.unpinnedTemplate(m.URL), sr.unpinnedTemplate(m.Index), sr.unpinnedTemplate(m.Pattern), sr.unpinnedTemplate(m.SignatureURL)
		a, err := c.planAsset(e, at, vars)
		if err != nil {
			return Plan{}, fmt.Errorf("catalog: %s: %s: %w", s, at.Role, err)
		}
		p.Assets = append(p.Assets, a)
	}
	return p, nil
}

// vars are the template values for a canonical spec.
func (e *entry) vars(s image.Spec) map[string]string {
	vars := map[string]string{"distro": s.Distro, "version": s.Version, "arch": e.Arches[s.Arch]}
	if cn, ok := e.Codenames[s.Version]; ok {
		vars["codename"] = cn
	}
	if s.Serial != "" {
		vars["serial"] = s.Serial
	}
	return vars
}

// Plan computes, without network access, what resolving spec involves. For
// an image with serials, spec must name one (else ErrSerialRequired): list
// them with Serials.
func (c *Catalog) Plan(spec image.Spec) (Plan, error) {
	s, e, err := c.canonical(spec)
	if err != nil {
		return Plan{}, err
	}
	if e.Serials != nil && s.Serial == "" {
		return Plan{}, fmt.Errorf("catalog: %s: %w (list them with Serials)", s, ErrSerialRequired)
	}
	vars := e.vars(s)
	p := Plan{Spec: s, BootMode: e.BootMode, AllowUnsigned: c.allowUnsigned}
	for _, at := range e.Assets {
		a, err := c.planAsset(e, at, vars)
		if err != nil {
			return Plan{}, fmt.Errorf("catalog: %s: %s: %w", s, at.Role, err)
		}
		p.Assets = append(p.Assets, a)
	}
	return p, nil
}

func (c *Catalog) planAsset(e *entry, at AssetTemplate, vars map[string]string) (PlannedAsset, error) {
	if err := needVars(vars, at.URL, at.NamePattern, at.Manifest.URL, at.Manifest.Index, at.Manifest.Pattern, at.Manifest.SignatureURL); err != nil {
		return PlannedAsset{}, err
	}
	a := PlannedAsset{Role: at.Role, Format: at.Format}
	if at.NamePattern != "" {
		a.URL = joinURL(e.BaseURL, expand(strings.TrimSuffix(at.URL, "{name}"), vars, nil))
		re, err := compilePattern(at.NamePattern, vars)
		if err != nil {
			return PlannedAsset{}, fmt.Errorf("name_pattern: %w", err)
		}
		a.NamePattern = re
	} else {
		a.URL = joinURL(e.BaseURL, expand(at.URL, vars, nil))
		a.Name = at.Name
		if a.Name == "" {
			a.Name = path.Base(expand(at.URL, vars, nil))
		}
	}
	mt := at.Manifest
	m := ManifestPlan{
		Format:        mt.Format,
		Signature:     mt.Signature,
		Keyring:       e.keyring,
		KeyringSource: e.keyringSource,
		UnsignedNote:  mt.Note,
	}
	if mt.URL != "" {
		m.URL = joinURL(e.BaseURL, expand(mt.URL, vars, nil))
	} else {
		m.IndexURL = joinURL(e.BaseURL, expand(mt.Index, vars, nil))
		re, err := compilePattern(mt.Pattern, vars)
		if err != nil {
			return PlannedAsset{}, fmt.Errorf("manifest pattern: %w", err)
		}
		m.Pattern = re
	}
	if mt.SignatureURL != "" {
		m.SignatureURL = joinURL(e.BaseURL, expand(mt.SignatureURL, vars, nil))
	}
	switch {
	case mt.Signature == SignatureNone:
		m.Keyring, m.KeyringSource = nil, ""
		if m.UnsignedNote == "" {
			m.UnsignedNote = e.Distro + " publishes no signature for this manifest"
		}
	case m.Keyring == nil && !c.allowUnsigned:
		help := ""
		if e.KeyHelp != "" {
			help = " (" + e.KeyHelp + ")"
		}
		return PlannedAsset{}, fmt.Errorf("%w: the %s manifest is OpenPGP-signed (%s) but vmprep ships no key for it%s; pass --keyring FILE with the distribution's public key, or --allow-unsigned to skip verification",
			ErrNoTrustedKey, e.Distro, mt.Signature, help)
	}
	a.Manifest = m
	return a, nil
}

// compilePattern expands a pattern template for one spec. Validation
// compiled it with stand-in values, but a real value can still break it
// (a brace template like "x{{version}}" becomes a repeat count, capped at
// 1000), so this is an error, never a panic.
func compilePattern(tmpl string, vars map[string]string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + expand(tmpl, vars, regexp.QuoteMeta) + `)$`)
	if err != nil {
		return nil, fmt.Errorf("%w: %q for version %s: %w", ErrInvalidCatalog, tmpl, vars["version"], err)
	}
	return re, nil
}

// needVars fails when a template uses {codename} but the version has none.
func needVars(vars map[string]string, templates ...string) error {
	for _, t := range templates {
		for _, ph := range placeholder.FindAllString(t, -1) {
			name := ph[1 : len(ph)-1]
			if _, ok := vars[name]; !ok && slices.Contains(pathVars, name) {
				return fmt.Errorf("%w: version %s has no %s", ErrUnknownVersion, vars["version"], name)
			}
		}
	}
	return nil
}

// canonicalVersion maps a codename to its version and checks the version is known.
func (e *entry) canonicalVersion(v string) (string, error) {
	for num, cn := range e.Codenames {
		if cn == v {
			v = num
			break
		}
	}
	switch {
	case len(e.Versions) > 0:
		if slices.Contains(e.Versions, v) {
			return v, nil
		}
	case e.versionRE != nil:
		if e.versionRE.MatchString(v) {
			return v, nil
		}
	default:
		return v, nil
	}
	return "", fmt.Errorf("catalog: %s: %w %q (%s)", e.Distro, ErrUnknownVersion, v, e.knownVersions())
}

func (e *entry) knownVersions() string {
	if len(e.Versions) > 0 {
		var parts []string
		for _, v := range e.Versions {
			if cn, ok := e.Codenames[v]; ok {
				v += " (" + cn + ")"
			}
			parts = append(parts, v)
		}
		return "known: " + strings.Join(parts, ", ")
	}
	msg := "versions must match " + e.VersionPattern
	if len(e.Codenames) > 0 {
		var cns []string
		for _, v := range slices.Sorted(maps.Keys(e.Codenames)) {
			cns = append(cns, e.Codenames[v]+"="+v)
		}
		msg += "; codenames: " + strings.Join(cns, ", ")
	}
	return msg
}

func (e *entry) archList() []string {
	var out []string
	for a := range e.Arches {
		out = append(out, string(a))
	}
	slices.Sort(out)
	return out
}

// pathEscape escapes a manifest-listed file name for use as a URL path element.
func pathEscape(name string) string {
	var b bytes.Buffer
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~+", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// Info describes a catalog entry for people and scripts (vmprep catalog).
type Info struct {
	Distro      string       `json:"distro"`
	Description string       `json:"description,omitempty"`
	BootMode    BootMode     `json:"boot_mode,omitempty"`
	Arches      []image.Arch `json:"arches,omitempty"`
	// Versions are the versions the entry lists; with VersionPattern instead,
	// the versions named in Codenames.
	Versions       []string          `json:"versions,omitempty"`
	VersionPattern string            `json:"version_pattern,omitempty"`
	Codenames      map[string]string `json:"codenames,omitempty"`
	// Signatures are the kinds of signature its manifests carry.
	Signatures []SignatureKind `json:"signatures,omitempty"`
	// Keyring names the keys trusted to sign them; empty when none is
	// configured (then KeyHelp says where to get one).
	Keyring string `json:"keyring,omitempty"`
	KeyHelp string `json:"key_help,omitempty"`
	// Serials is true when each build has its own directory and can be pinned.
	Serials bool `json:"serials"`
	// Unsupported is set for a distro that is known but cannot be prepared.
	Unsupported *Unsupported `json:"unsupported,omitempty"`
}

// Entries describes every catalog entry, supported or not, sorted by distro.
func (c *Catalog) Entries() []Info {
	out := make([]Info, 0, len(c.entries))
	for _, name := range slices.Sorted(maps.Keys(c.entries)) {
		out = append(out, c.entries[name].info())
	}
	return out
}

// Entry describes one distro's entry (*UnknownDistroError if there is none).
func (c *Catalog) Entry(distro string) (Info, error) {
	d, err := image.CheckName("distro", distro)
	if err != nil {
		return Info{}, fmt.Errorf("catalog: %w", err)
	}
	e, ok := c.entries[d]
	if !ok {
		return Info{}, &UnknownDistroError{Distro: d, Supported: c.Distros()}
	}
	return e.info(), nil
}

func (e *entry) info() Info {
	in := Info{Distro: e.Distro, Description: e.Description, Unsupported: e.Unsupported}
	if e.Unsupported != nil {
		return in
	}
	in.BootMode, in.Arches, in.Serials = e.BootMode, e.archArches(), e.Serials != nil
	in.VersionPattern, in.Codenames = e.VersionPattern, maps.Clone(e.Codenames)
	in.Versions = slices.Clone(e.Versions)
	if len(in.Versions) == 0 {
		in.Versions = slices.Collect(maps.Keys(e.Codenames))
	}
	slices.SortFunc(in.Versions, func(a, b string) int { return image.CompareNatural(b, a) })
	for _, a := range e.Assets {
		if !slices.Contains(in.Signatures, a.Manifest.Signature) {
			in.Signatures = append(in.Signatures, a.Manifest.Signature)
		}
	}
	if e.keyring != nil {
		in.Keyring = e.keyringSource
	}
	in.KeyHelp = e.KeyHelp
	return in
}

func (e *entry) archArches() []image.Arch {
	var out []image.Arch
	for _, a := range e.archList() {
		out = append(out, image.Arch(a))
	}
	return out
}

package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// KeyFile is the key store of `auth.store: file` (SPEC §3): the apps and
// their keys.
type KeyFile struct {
	Apps []KeyApp `yaml:"apps"`
}

// KeyApp is one app of a key file.
type KeyApp struct {
	ID string `yaml:"id"`
	// Plan selects rate_limit.plans; "" is the default tiers.
	Plan     string     `yaml:"plan"`
	Keys     []KeyEntry `yaml:"keys"`
	Disabled bool       `yaml:"disabled"`
}

// KeyEntry is one key of an app: its SHA-256 in hex, or, for local
// development only, the key itself.
type KeyEntry struct {
	SHA256 string `yaml:"sha256"`
	Key    string `yaml:"key"`
}

// Hash returns the entry's SHA-256, from either form. The entry must have
// passed validation.
func (e KeyEntry) Hash() [32]byte {
	if e.Key != "" {
		return sha256.Sum256([]byte(e.Key))
	}
	var h [32]byte
	_, _ = hex.Decode(h[:], []byte(strings.ToLower(e.SHA256)))
	return h
}

// keyFormat is SPEC §3's key format. The gateway's hot path has a
// hand-written parser (auth.ParseKey); this one only checks key files.
var keyFormat = regexp.MustCompile(`^(pk|sk)_(live|test)_[A-Za-z0-9]{24,128}$`)

// KeyFilePath returns auth.file resolved against the directory of the
// config file at configPath, as relative paths in a config mean.
func KeyFilePath(configPath, file string) string {
	if file == "" || filepath.IsAbs(file) {
		return file
	}
	return filepath.Join(filepath.Dir(configPath), file)
}

// LoadKeyFile reads and validates a key file. Errors name their entry
// under the prefix "auth.file: ".
func LoadKeyFile(path string, plans map[string]Plan) (*KeyFile, error) {
	kf, errs := loadKeyFile(path, plans, true)
	if len(errs) > 0 {
		return nil, errs
	}
	return kf, nil
}

func loadKeyFile(path string, plans map[string]Plan, checkPlans bool) (*KeyFile, Errors) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{{Path: "auth.file", Msg: err.Error()}}
	}
	return parseKeyFile(data, plans, checkPlans)
}

// ParseKeyFile decodes and validates a key file: every app has a unique
// id of 1 to 128 visible ASCII characters and a known plan, every key
// entry is exactly one of a 64-digit hex sha256 or a well-formed key, and
// no key belongs to two entries. Like [Parse], it reports every error of
// the file at once, in file order.
func ParseKeyFile(data []byte, plans map[string]Plan) (*KeyFile, error) {
	kf, errs := parseKeyFile(data, plans, true)
	if len(errs) > 0 {
		return nil, errs
	}
	return kf, nil
}

// parseKeyFile is ParseKeyFile; checkPlans false skips the check of each
// app's plan against plans (when the config's plans had errors of their
// own, every plan would look unknown).
func parseKeyFile(data []byte, plans map[string]Plan, checkPlans bool) (*KeyFile, Errors) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, Errors{{Path: "auth.file", Msg: "invalid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	kf := &KeyFile{}
	c := newChecker(func(string) (string, bool) { return "", false })
	var errs Errors
	switch {
	case doc.Kind == 0:
	case c.check(&doc, typeOfKeyFile, "", pos{1, 1}):
		errs = c.errs
	default:
		if err := doc.Decode(kf); err != nil {
			errs = append(c.errs, FieldError{Msg: err.Error()})
		} else {
			errs = c.merge(kf.validate(plans, checkPlans))
		}
	}
	if len(errs) == 0 {
		return kf, nil
	}
	for i, e := range errs {
		if e.Path == "" {
			errs[i].Path = "auth.file"
		} else {
			errs[i].Path = "auth.file: " + e.Path
		}
	}
	return nil, errs
}

// validate checks the decoded key file; paths are relative to the file.
func (kf *KeyFile) validate(plans map[string]Plan, checkPlans bool) Errors {
	var errs Errors
	ids := map[string]int{}
	owner := map[[32]byte]string{}
	for i, app := range kf.Apps {
		p := fmt.Sprintf("apps[%d]", i)
		switch {
		case app.ID == "":
			errs.add(p+".id", "required")
		case !ValidIdent(app.ID):
			errs.add(p+".id", "%s", identProblem(app.ID))
		default:
			if j, dup := ids[app.ID]; dup {
				errs.add(p+".id", "%q is also apps[%d]", app.ID, j)
			}
			ids[app.ID] = i
		}
		if app.Plan != "" && checkPlans {
			if _, ok := plans[app.Plan]; !ok {
				errs.add(p+".plan", "unknown plan %q (rate_limit.plans)", app.Plan)
			}
		}
		for j, k := range app.Keys {
			kp := fmt.Sprintf("%s.keys[%d]", p, j)
			switch {
			case k.SHA256 != "" && k.Key != "":
				errs.add(kp, "set either sha256 or key, not both")
				continue
			case k.SHA256 != "":
				if b, err := hex.DecodeString(k.SHA256); err != nil || len(b) != sha256.Size {
					errs.add(kp+".sha256", "want 64 hex digits (the SHA-256 of the whole key), got %d characters", len(k.SHA256))
					continue
				}
			case k.Key != "":
				if !keyFormat.MatchString(k.Key) {
					errs.add(kp+".key", "not a valid API key (%s)", keyFormat)
					continue
				}
			default:
				errs.add(kp, "sha256 or key is required")
				continue
			}
			h := k.Hash()
			if prev, dup := owner[h]; dup {
				errs.add(kp, "the same key as %s", prev)
				continue
			}
			owner[h] = fmt.Sprintf("apps[%d].keys[%d] (app %q)", i, j, app.ID)
		}
	}
	return errs
}

// MaxIdentLen is the longest app id, plan or status a key store may hold.
const MaxIdentLen = 128

// ValidIdent reports whether s is 1 to [MaxIdentLen] visible ASCII
// characters (0x21–0x7E): what a key store's app id, plan and status must
// be. An app id travels upstream in the X-App-Id header and into log lines
// and budget keys, so a CR, LF, space or other control byte there would
// break the request or the log, not just look odd.
func ValidIdent(s string) bool {
	if len(s) == 0 || len(s) > MaxIdentLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// identProblem says why s is not a [ValidIdent], for an error message.
func identProblem(s string) string {
	if len(s) > MaxIdentLen {
		return fmt.Sprintf("must be at most %d characters, got %d", MaxIdentLen, len(s))
	}
	return fmt.Sprintf("must be visible ASCII characters (no space or control character), got %q", s)
}

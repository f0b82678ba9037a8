package driver

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// Identifiers. See the package doc for the formats.
const (
	// maxStoreName bounds a store name so that IDs built from derived
	// names stay within CSI's 128-byte guidance.
	maxStoreName = 16
	// maxDerivedVol and maxDerivedSnap bound the volume and snapshot names
	// derived from CSI names: 16 + 1 + 64 + 1 + 46 = 128.
	maxDerivedVol  = 64
	maxDerivedSnap = 46
	// metaPrefix is the reserved key prefix (a name no derived volume takes)
	// under which the driver keeps its own records in a store.
	metaPrefix = "csi.meta"
)

// volumeID names a volume: "<store>/<volume>".
type volumeID struct {
	Store string
	Vol   string
}

func (v volumeID) String() string { return v.Store + "/" + v.Vol }

// key names the volume in node-local paths and attachments:
// "<store>.<volume>" (store names contain no '.', so it is unambiguous).
func (v volumeID) key() string { return v.Store + "." + v.Vol }

// snapshotID names a snapshot: "<store>/<volume>@<snapshot>".
type snapshotID struct {
	Store string
	Vol   string
	Snap  string
}

func (s snapshotID) String() string { return s.Store + "/" + s.Vol + "@" + s.Snap }

func (s snapshotID) volume() volumeID { return volumeID{Store: s.Store, Vol: s.Vol} }

// validStoreName checks a store name: 1-16 characters of [A-Za-z0-9_-]
// starting with a letter or digit.
func validStoreName(s string) error {
	if s == "" || len(s) > maxStoreName || !isAlnum(s[0]) {
		return fmt.Errorf("store name %q must be 1-%d characters starting with a letter or digit", s, maxStoreName)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' {
			return fmt.Errorf("store name %q has a character outside [A-Za-z0-9_-]", s)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// validObjectName checks a volume or snapshot name as the engine does, and
// refuses the driver's reserved prefix.
func validObjectName(s string) error {
	if err := backend.ValidateName(s); err != nil {
		return err
	}
	if s == metaPrefix {
		return fmt.Errorf("%q is reserved", s)
	}
	return nil
}

// parseVolumeID parses "<store>/<volume>". Nothing else is accepted: no
// second '/', no '..', no character outside the engine's name charset, so a
// hostile ID cannot name a path outside the store or the WAL directory.
func parseVolumeID(s string) (volumeID, error) {
	store, vol, ok := strings.Cut(s, "/")
	if !ok {
		return volumeID{}, fmt.Errorf("volume ID %q is not <store>/<volume>", s)
	}
	if err := validStoreName(store); err != nil {
		return volumeID{}, fmt.Errorf("volume ID %q: %v", s, err)
	}
	if err := validObjectName(vol); err != nil {
		return volumeID{}, fmt.Errorf("volume ID %q: %v", s, err)
	}
	return volumeID{Store: store, Vol: vol}, nil
}

// parseSnapshotID parses "<store>/<volume>@<snapshot>".
func parseSnapshotID(s string) (snapshotID, error) {
	v, snap, ok := strings.Cut(s, "@")
	if !ok {
		return snapshotID{}, fmt.Errorf("snapshot ID %q is not <store>/<volume>@<snapshot>", s)
	}
	vid, err := parseVolumeID(v)
	if err != nil {
		return snapshotID{}, fmt.Errorf("snapshot ID %q: %v", s, err)
	}
	if err := validObjectName(snap); err != nil {
		return snapshotID{}, fmt.Errorf("snapshot ID %q: %v", s, err)
	}
	return snapshotID{Store: vid.Store, Vol: vid.Vol, Snap: snap}, nil
}

// volumeNameFor derives a volume name from a CSI volume name, the same one
// every time, so CreateVolume is idempotent without any state of ours.
func volumeNameFor(csiName string) string { return deriveName(csiName, maxDerivedVol) }

// snapshotNameFor derives a snapshot name from a CSI snapshot name.
func snapshotNameFor(csiName string) string { return deriveName(csiName, maxDerivedSnap) }

// deriveName returns name itself when it is a valid engine name of at most
// max bytes (e.g. Kubernetes' pvc-<uuid> and snapshot-<uuid>); otherwise a
// readable prefix of it, '-', and 32 hex digits of its SHA-256.
func deriveName(name string, max int) string {
	if len(name) <= max && validObjectName(name) == nil {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	h := hex.EncodeToString(sum[:16])
	var b strings.Builder
	for i := 0; i < len(name) && b.Len() < max-len(h)-1; i++ {
		c := name[i]
		switch {
		case isAlnum(c), c == '-', c == '_', c == '.':
			if b.Len() == 0 && !isAlnum(c) {
				continue
			}
			b.WriteByte(c)
		}
	}
	if b.Len() == 0 {
		b.WriteString("h")
	}
	return b.String() + "-" + h
}

package driver

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// errCorruptState: a node state file does not decode (the node reports it,
// never acts on a guess).
var errCorruptState = errors.New("corrupt node state file")

// Node-local state, under --state-dir:
//
//	volumes/<store>.<volume>/state.json        the volume's staging (volState), written atomically
//	volumes/<store>.<volume>/credentials.env   S3 credentials from node-stage secrets (0600)
//	volumes/<store>.<volume>/encryption.key    an encrypted volume's KEK from the node-stage secret
//	                                           encryptionKey, base64 (0600; --state-dir is a tmpfs,
//	                                           /run/viperblock, so the key never reaches a disk)
//	volumes/<store>.<volume>/nbdkit.pid        written by nbdkit once it serves
//	volumes/<store>.<volume>/nbdkit.status     nbdkit's exit status, written by its keeper
//	volumes/<store>.<volume>/nbdkit.log        nbdkit's output
//	sock/<hash>.sock                           nbdkit's socket (0600; short, for the 108-byte limit)
//	sock/<hash>.metrics                        the plugin's metrics socket (0600; pkg/volmetrics)
//	creds/                                     credential files for the node's own store handles
//
// and under --wal-dir, the engine's WAL: <wal-dir>/<store>/<volume>/...
//
// Directories are 0700. A state file exists from the start of NodeStage
// to the end of a clean NodeUnstage; the healer reads them after a restart.

const stateVersion = 1

// volState is what the node remembers about a staged volume.
type volState struct {
	Version     int      `json:"version"`
	VolumeID    string   `json:"volumeID"`
	StagingPath string   `json:"stagingPath"`
	Block       bool     `json:"block"`
	FsType      string   `json:"fsType,omitempty"`
	MountFlags  []string `json:"mountFlags,omitempty"`
	Mode        string   `json:"mode"`
	ReadOnly    bool     `json:"readOnly"`
	MkfsOptions []string `json:"mkfsOptions,omitempty"`
	Cache       string   `json:"cache,omitempty"`
	Drain       string   `json:"drainInterval,omitempty"`
	Durability  string   `json:"durability,omitempty"`
	Lease       string   `json:"leaseDuration,omitempty"`
	Creds       bool     `json:"credentials,omitempty"`   // credentials.env exists
	Key         bool     `json:"encryptionKey,omitempty"` // encryption.key exists: the volume's KEK
	Device      string   `json:"device,omitempty"`
	Size        int64    `json:"size,omitempty"`  // the size the device shows
	Epoch       uint64   `json:"epoch,omitempty"` // ownership epoch of our nbdkit's open (from the WAL's OWNER file)
	Staged      bool     `json:"staged"`          // every NodeStage step completed
	// Standby: staged as the target of a live migration (a
	// MULTI_NODE_MULTI_WRITER block volume another node owned): nbdkit
	// runs with standby=true and takes the volume over at the first write
	// (see handedOver).
	Standby bool     `json:"standby,omitempty"`
	Targets []string `json:"targets,omitempty"`
	// Fenced says why the volume is left closed: its nbdkit had exited and
	// another owner had taken the volume over, so the healer did not start
	// it again. Set by the healer; the state stays until NodeUnstageVolume
	// (which then neither drains nor replays: the WAL is quarantined) or a
	// new NodeStageVolume (which starts afresh and takes ownership).
	Fenced string `json:"fenced,omitempty"`
}

func (s *volState) hasTarget(t string) bool {
	for _, x := range s.Targets {
		if x == t {
			return true
		}
	}
	return false
}

func (s *volState) removeTarget(t string) {
	out := s.Targets[:0]
	for _, x := range s.Targets {
		if x != t {
			out = append(out, x)
		}
	}
	s.Targets = out
}

// paths of one volume's node-local files.
type volPaths struct {
	Dir, State, Creds, Key, Pidfile, Status, Log, Socket, Metrics, WALDir string
}

func (n *NodeServer) paths(id volumeID) volPaths {
	dir := filepath.Join(n.opts.StateDir, "volumes", id.key())
	sum := sha256.Sum256([]byte(id.String()))
	return volPaths{
		Dir:     dir,
		State:   filepath.Join(dir, "state.json"),
		Creds:   filepath.Join(dir, "credentials.env"),
		Key:     filepath.Join(dir, "encryption.key"),
		Pidfile: filepath.Join(dir, "nbdkit.pid"),
		Status:  filepath.Join(dir, "nbdkit.status"),
		Log:     filepath.Join(dir, "nbdkit.log"),
		Socket:  filepath.Join(n.opts.StateDir, "sock", hex.EncodeToString(sum[:8])+".sock"),
		Metrics: filepath.Join(n.opts.StateDir, "sock", hex.EncodeToString(sum[:8])+".metrics"),
		WALDir:  filepath.Join(n.opts.WALDir, id.Store),
	}
}

// loadState reads a volume's state; ok is false if it is not staged here.
func (n *NodeServer) loadState(id volumeID) (*volState, bool, error) {
	return readVolState(vfs.Default, n.paths(id).State, id)
}

// saveState writes a volume's state atomically.
func (n *NodeServer) saveState(id volumeID, st *volState) error {
	return writeVolState(vfs.Default, n.paths(id).State, id, st)
}

// readVolState reads the state file at path; ok is false if there is
// none. A file that does not decode, or that belongs to another volume or
// version, is an error naming the file: never a zero state.
func readVolState(fsys vfs.FS, path string, id volumeID) (*volState, bool, error) {
	b, err := vfs.ReadFile(fsys, path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	var st volState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, false, fmt.Errorf("%w: state of %s (%s, %d bytes) is unreadable: %v", errCorruptState, id, path, len(b), err)
	}
	if st.Version != stateVersion || st.VolumeID != id.String() {
		return nil, false, fmt.Errorf("%w: state of %s (%s) has version %d and volume %q", errCorruptState, id, path, st.Version, st.VolumeID)
	}
	return &st, true, nil
}

// writeVolState writes a state file atomically, mode 0600
// (vfs.WriteFileAtomic), creating its directory durably.
func writeVolState(fsys vfs.FS, path string, id volumeID, st *volState) error {
	st.Version = stateVersion
	st.VolumeID = id.String()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := vfs.MkdirAllDurable(fsys, filepath.Dir(path)); err != nil {
		return err
	}
	return vfs.WriteFileAtomic(fsys, path, b)
}

// stagedVolumes lists the volumes with a state directory.
func (n *NodeServer) stagedVolumes() ([]volumeID, error) {
	ents, err := os.ReadDir(filepath.Join(n.opts.StateDir, "volumes"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []volumeID
	for _, e := range ents {
		store, vol, ok := cutKey(e.Name())
		if !ok {
			continue
		}
		if id, err := parseVolumeID(store + "/" + vol); err == nil {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// cutKey splits "<store>.<volume>" (store names have no '.').
func cutKey(k string) (string, string, bool) {
	for i := 0; i < len(k); i++ {
		if k[i] == '.' {
			return k[:i], k[i+1:], true
		}
	}
	return "", "", false
}

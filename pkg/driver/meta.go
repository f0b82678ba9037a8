package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// The driver's own records in a store, under the reserved name csi.meta
// (which no volume can take: see validObjectName). Each is a small JSON
// object; the engine never reads them.
//
//	csi.meta/publish/<volume>     which node a volume is published to (ControllerPublishVolume;
//	                              two nodes for a migratable block volume while it migrates)
//	csi.meta/snapshots/<snapshot> which volume a CSI snapshot name belongs to (CSI snapshot
//	                              names are unique across volumes; the engine's are per volume)
//	csi.meta/nodes/<node>         a node plugin that registered itself (--node-check=store)
//
// A record's version (backend.Version) makes updates compare-and-swap, so
// two controllers (during a leader hand-over) cannot both win.

func publishKey(vol string) string    { return metaPrefix + "/publish/" + vol }
func snapClaimKey(snap string) string { return metaPrefix + "/snapshots/" + snap }
func nodeKey(node string) string      { return metaPrefix + "/nodes/" + node }

// publishRecord says a volume is published to a node, and, for a
// MULTI_NODE_MULTI_WRITER block volume during a live migration, to a
// second node (Also; absent in records of other volumes).
type publishRecord struct {
	Node     string    `json:"node"`
	Also     string    `json:"also,omitempty"`
	ReadOnly bool      `json:"readonly"`
	Mode     string    `json:"mode"`
	Block    bool      `json:"block"`
	Time     time.Time `json:"time"`
}

// snapClaim says which volume owns a CSI snapshot name.
type snapClaim struct {
	Volume string    `json:"volume"`
	Time   time.Time `json:"time"`
}

// nodeRecord registers a node plugin.
type nodeRecord struct {
	Node string    `json:"node"`
	Time time.Time `json:"time"`
}

// getRecord reads a JSON record; found is false when it does not exist.
func getRecord(ctx context.Context, st backend.Store, key string, v any) (backend.Version, bool, error) {
	b, ver, err := st.Get(ctx, key)
	if errors.Is(err, backend.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return "", false, fmt.Errorf("record %s is malformed: %v", key, err)
	}
	return ver, true, nil
}

// putRecord writes a JSON record if its version is still ifMatch ("" for a
// record that must not exist yet). ok is false when it lost the race.
func putRecord(ctx context.Context, st backend.Store, key string, v any, ifMatch backend.Version) (bool, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return false, err
	}
	_, err = st.PutIf(ctx, key, b, ifMatch)
	if errors.Is(err, backend.ErrPrecondition) {
		return false, nil
	}
	return err == nil, err
}

// listRecords returns the names under a record prefix such as
// "csi.meta/publish/".
func listRecords(ctx context.Context, st backend.Store, prefix string) ([]string, error) {
	keys, err := st.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, k := range keys {
		if n, ok := strings.CutPrefix(k, prefix); ok && n != "" && !strings.Contains(n, "/") {
			names = append(names, n)
		}
	}
	return names, nil
}

// nodes lists the nodes the record publishes the volume to.
func (r publishRecord) nodes() []string {
	if r.Also != "" {
		return []string{r.Node, r.Also}
	}
	return []string{r.Node}
}

// publishedNodes maps each published volume of a store to its nodes.
func publishedNodes(ctx context.Context, st backend.Store) (map[string][]string, error) {
	vols, err := listRecords(ctx, st, metaPrefix+"/publish/")
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, v := range vols {
		var rec publishRecord
		_, ok, err := getRecord(ctx, st, publishKey(v), &rec)
		if err != nil {
			return nil, err
		}
		if ok {
			out[v] = rec.nodes()
		}
	}
	return out, nil
}

// registerNode writes this node's record into a store.
func registerNode(ctx context.Context, st backend.Store, node string) error {
	b, err := json.Marshal(nodeRecord{Node: node, Time: time.Now().UTC()})
	if err != nil {
		return err
	}
	return st.Put(ctx, nodeKey(node), b)
}

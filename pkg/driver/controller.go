package driver

import (
	"context"
	"errors"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// maxVolumeSize is the engine's limit.
const maxVolumeSize = 1 << 50

// NodeChecker tells ControllerPublishVolume whether a node exists. st is
// the volume's store (the store checker looks for the node's record there).
type NodeChecker interface {
	NodeExists(ctx context.Context, node string, st backend.Store) (bool, error)
}

// StoreNodeChecker finds nodes by the records node plugins write into each
// store at start-up (csi.meta/nodes/<node>).
type StoreNodeChecker struct{}

// NodeExists reports whether node registered in st.
func (StoreNodeChecker) NodeExists(ctx context.Context, node string, st backend.Store) (bool, error) {
	var rec nodeRecord
	_, ok, err := getRecord(ctx, st, nodeKey(node), &rec)
	return ok, err
}

// AnyNodeChecker accepts every node ID.
type AnyNodeChecker struct{}

// NodeExists always reports true.
func (AnyNodeChecker) NodeExists(context.Context, string, backend.Store) (bool, error) {
	return true, nil
}

// ControllerServer is the CSI Controller service. It keeps no state: the
// stores are the source of truth for volumes, snapshots and publications.
type ControllerServer struct {
	csi.UnimplementedControllerServer
	opts    *Options
	stores  *storeSet
	nodes   NodeChecker
	metrics *Metrics
	locks   inflight // per volume ID and per snapshot name
	tmpDir  string   // private scratch space (credential files, fencing WALs)
	// stopSecret ends the following of the store Secret (--store-secret-dir).
	stopSecret func()
}

// NewControllerServer builds the controller. open may be nil (backend.Open).
func NewControllerServer(opts *Options, nodes NodeChecker, open storeOpener) (*ControllerServer, error) {
	if err := opts.ValidateController(); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "viperblock-controller-")
	if err != nil {
		return nil, err
	}
	credDir := opts.CredentialsDir
	if credDir == "" {
		credDir = tmp
	} else if err := os.MkdirAll(credDir, 0o700); err != nil {
		return nil, err
	}
	if nodes == nil {
		nodes = StoreNodeChecker{}
	}
	secret, err := opts.SetupStoreSecret(credDir)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	go secret.Run(ctx)
	return &ControllerServer{opts: opts, stores: newStoreSet(opts, credDir, open), nodes: nodes, metrics: DefaultMetrics(), tmpDir: tmp, stopSecret: stop}, nil
}

// Close releases the stores and scratch space.
func (c *ControllerServer) Close() {
	if c.stopSecret != nil {
		c.stopSecret()
	}
	c.stores.close()
	os.RemoveAll(c.tmpDir)
}

// ControllerGetCapabilities lists exactly what works.
func (c *ControllerServer) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES_PUBLISHED_NODES,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}},
		})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// store opens a store, counting failures.
func (c *ControllerServer) store(ctx context.Context, name string, secrets map[string]string) (backend.Store, error) {
	st, err := c.stores.get(ctx, name, secrets)
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		c.metrics.StoreErrors.WithLabelValues(name).Inc()
	}
	return st, err
}

// CheckStores runs the store self-test (see storeSet.verify) on every
// configured S3 store. An error names the stores that failed it; the
// controller refuses to start on them.
func (c *ControllerServer) CheckStores(ctx context.Context) error { return c.stores.checkAll(ctx) }

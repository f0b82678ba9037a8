package main

import (
	"context"

	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/viperblock/viperblock-csi/pkg/driver"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

var _ driver.NodeChecker = KubeNodeChecker{}

// KubeNodeChecker finds nodes through their CSINode objects: a node exists
// for this driver when some CSINode lists the driver with that node ID
// (the node-driver-registrar, or the node plugin's own registration, puts
// it there). It needs get and list on storage.k8s.io csinodes.
type KubeNodeChecker struct {
	Reader client.Reader
	Driver string
}

// NodeExists looks for the CSINode named node first (node IDs are node
// names by default), then for any CSINode that maps this driver to node.
func (k KubeNodeChecker) NodeExists(ctx context.Context, node string, _ backend.Store) (bool, error) {
	var cn storagev1.CSINode
	err := k.Reader.Get(ctx, client.ObjectKey{Name: node}, &cn)
	if err == nil && k.lists(&cn, node) {
		return true, nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return false, err
	}
	var all storagev1.CSINodeList
	if err := k.Reader.List(ctx, &all); err != nil {
		return false, err
	}
	for i := range all.Items {
		if k.lists(&all.Items[i], node) {
			return true, nil
		}
	}
	return false, nil
}

func (k KubeNodeChecker) lists(cn *storagev1.CSINode, node string) bool {
	for _, d := range cn.Spec.Drivers {
		if d.Name == k.Driver && d.NodeID == node {
			return true
		}
	}
	return false
}

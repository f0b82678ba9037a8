package main

import (
	"context"
	"testing"

	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

func TestKubeNodeChecker(t *testing.T) {
	csinode := func(name string, drivers ...storagev1.CSINodeDriver) *storagev1.CSINode {
		return &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: storagev1.CSINodeSpec{Drivers: drivers}}
	}
	c := fake.NewClientBuilder().WithScheme(scheme.Scheme).WithObjects(
		csinode("node-a", storagev1.CSINodeDriver{Name: "csi.viperblock.io", NodeID: "node-a"}),
		csinode("node-b", storagev1.CSINodeDriver{Name: "other.csi", NodeID: "node-b"}),
		csinode("node-c", storagev1.CSINodeDriver{Name: "csi.viperblock.io", NodeID: "custom-id"}),
	).Build()
	k := KubeNodeChecker{Reader: c, Driver: "csi.viperblock.io"}
	for node, want := range map[string]bool{"node-a": true, "node-b": false, "custom-id": true, "node-c": false, "nope": false} {
		got, err := k.NodeExists(context.Background(), node, nil)
		if err != nil || got != want {
			t.Errorf("NodeExists(%s) = %v, %v; want %v", node, got, err, want)
		}
	}
}

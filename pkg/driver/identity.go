package driver

import (
	"context"
	"sync/atomic"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/viperblock/viperblock-csi/internal/version"
)

// IdentityServer is the CSI Identity service.
type IdentityServer struct {
	csi.UnimplementedIdentityServer
	opts  *Options
	ready *atomic.Bool // set while serving
	probe func(context.Context) error
}

// GetPluginInfo returns the driver's name and version.
func (s *IdentityServer) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	v := s.opts.Version
	if v == "" {
		v = version.String()
	}
	return &csi.GetPluginInfoResponse{Name: s.opts.DriverName, VendorVersion: v}, nil
}

// GetPluginCapabilities reports the plugin's capabilities as a whole, the
// same on the controller's socket and on every node's: the Controller
// service, online volume expansion, and no topology (any node can open any
// volume from the object store). The CSI spec describes the plugin, not one
// process of it; a CO or a test suite that talks to the node socket alone
// learns from it that a controller exists, and so calls
// ControllerExpandVolume before NodeExpandVolume.
func (s *IdentityServer) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE,
		}}},
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{
			Type: csi.PluginCapability_VolumeExpansion_ONLINE,
		}}},
	}}, nil
}

// Probe reports ready while the server serves and, on a node, while nbdkit
// and the plugin are usable.
func (s *IdentityServer) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	ok := s.ready == nil || s.ready.Load()
	if ok && s.probe != nil {
		if err := s.probe(ctx); err != nil {
			return nil, toStatus(err, "probe")
		}
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(ok)}, nil
}

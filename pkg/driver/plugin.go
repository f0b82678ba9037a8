package driver

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// What the node asks of nbdkit and the plugin besides serving volumes: is
// it there (Probe), and which parameters does the plugin take
// (virtual_size=). Both go through the Supervisor, which answers them the
// way it starts nbdkit.

// probe reports errUnavailable while nbdkit or the plugin is missing.
func (n *NodeServer) probe(ctx context.Context) error {
	if err := n.sup.Probe(ctx, n.opts.Nbdkit, n.opts.Plugin); err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	return nil
}

// pluginHelp is the plugin's --help text (its parameters).
func (n *NodeServer) pluginHelp() string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := n.sup.PluginHelp(ctx, n.opts.Nbdkit, n.opts.Plugin)
	if err != nil {
		klog.ErrorS(err, "cannot read the nbdkit plugin's parameters", "plugin", n.opts.Plugin)
	}
	return out
}

// pluginMetrics reports whether the plugin takes metrics= (a plugin older
// than it would refuse the parameter and not start): the node then
// collects the volume's engine metrics from that socket.
func (n *NodeServer) pluginMetrics() bool {
	n.pmOnce.Do(func() {
		n.pm = strings.Contains(n.pluginHelp(), "metrics=")
		if !n.pm {
			klog.InfoS("the nbdkit plugin has no metrics= parameter: volumes' engine metrics are not collected", "plugin", n.opts.Plugin)
		}
	})
	return n.pm
}

// virtualSize is the size nbdkit advertises when it is larger than the
// volume, so a device can grow while attached (see pkg/attach: nbdfuse
// learns the export size once). --virtual-size: -1 (auto) passes the
// largest volume size when the plugin knows the virtual_size= parameter;
// 0 never passes it.
func (n *NodeServer) virtualSize() int64 {
	n.vsOnce.Do(func() {
		switch {
		case n.opts.VirtualSize > 0:
			n.vs = n.opts.VirtualSize
		case n.opts.VirtualSize < 0:
			if strings.Contains(n.pluginHelp(), "virtual_size") {
				n.vs = maxVolumeSize
			} else {
				klog.InfoS("the nbdkit plugin has no virtual_size= parameter: attached volumes grow only where the attacher can follow the export size (kernel NBD), or after restaging", "plugin", n.opts.Plugin)
			}
		}
	})
	return n.vs
}

// volumeMemory is the memory= each volume's server gets: its share of the
// node's memory budget (see memory.go), if the plugin takes memory=.
// Without it the servers run with the engine's own defaults, which the
// budget does not bound: that is logged once.
func (n *NodeServer) volumeMemory() int64 {
	n.memOnce.Do(func() {
		if strings.Contains(n.pluginHelp(), "memory=") {
			n.mem = n.opts.VolumeMemory()
		} else {
			klog.InfoS("the nbdkit plugin has no memory= parameter: the volume servers' memory is not held to the node's memory budget", "plugin", n.opts.Plugin)
		}
	})
	return n.mem
}

package nemesis

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/internal/testutil/faultproxy"
	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
)

// numNodes is the number of simulated nodes.
const numNodes = 3

// storePrefix is the S3 prefix the volumes live under.
const storePrefix = "nemesis"

// cluster is what the schedules share: one versitygw, one fault proxy per
// node in front of it, the plugin and the vblock command.
type cluster struct {
	cfg     config
	s3      *s3server.Server
	proxies [numNodes]*faultproxy.Proxy
	plugin  string
	vblock  string
	// What the plugin's --help lists: lease_duration= and durability= are
	// passed only to a plugin that has them (unless forced).
	hasLeases, hasDurability bool
}

func newCluster(t *testing.T, cfg config) *cluster {
	t.Helper()
	testutil.NeedCommands(t, "nbdkit")
	c := &cluster{cfg: cfg}
	c.plugin = testutil.Plugin(t)
	c.vblock = testutil.Command(t, "./cmd/vblock")
	c.s3 = s3server.Start(t)
	for i := range c.proxies {
		c.proxies[i] = faultproxy.Start(t, c.s3.Endpoint, faultproxy.Options{Seed: uint64(i)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nbdkit", c.plugin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("nbdkit %s --help: %v\n%s", c.plugin, err, out)
	}
	c.hasLeases = strings.Contains(string(out), "lease_duration=")
	c.hasDurability = strings.Contains(string(out), "durability=")
	return c
}

// storeURL is node's store URL, through its fault proxy; node -1 gets the
// server itself. A few short attempts make a partitioned node give up
// quickly (its drains fail and are retried later).
func (c *cluster) storeURL(node int) string {
	endpoint := c.s3.Endpoint
	if node >= 0 {
		endpoint = c.proxies[node].URL
	}
	return s3server.StoreURL(c.s3.Bucket, storePrefix, endpoint, c.s3.CredentialsFile,
		"max_attempts=3", "timeout=5s", "max_backoff=500ms")
}

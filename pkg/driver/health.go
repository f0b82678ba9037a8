package driver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// walPending is what the volume's WAL on this node holds that the store
// may not have yet, as the engine measures it (vb.InspectWAL); an
// unreadable WAL directory counts as nothing pending (and is logged).
func walPending(walDir, vol string) (bytes int64, oldest time.Time) {
	ws, err := vb.InspectWAL(walDir, vol)
	if err != nil {
		klog.ErrorS(err, "cannot measure a volume's WAL", "walDir", walDir, "volume", vol)
	}
	return ws.PendingBytes, ws.Oldest
}

// NodeGetVolumeHealth reports a staged volume's condition on this node:
// INACCESSIBLE when nbdkit is not running, the device is not attached, the
// filesystem is not mounted, the store cannot be reached, or another node
// took the volume over (Fenced: either while our nbdkit ran, which then
// fails writes, or while it was down, and the healer left the volume
// closed); DEGRADED when the WAL holds more data, or older data, than the
// drain-lag limits allow.
func (n *NodeServer) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	op, _, err := volumeCall{verb: "volume health", volumeID: req.GetVolumeId()}.begin()
	if err != nil {
		return nil, err
	}
	id := op.id
	st, err := n.stagedAt(id, "")
	if err != nil {
		return nil, op.fail(err)
	}
	h := &csi.VolumeHealth{VolumeId: req.GetVolumeId()}
	add := func(t csi.VolumeHealthErrorType, reason, msg string) {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: t, Reason: reason, Message: msg})
	}
	if !st.Staged {
		add(csi.VolumeHealthErrorType_INACCESSIBLE, "NotStaged", "staging did not complete")
		return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
	}
	if n.events != nil {
		defer func() { n.events.observe(id.String(), h) }()
	}
	fenced := st.Fenced != ""
	if fenced {
		add(csi.VolumeHealthErrorType_INACCESSIBLE, "Fenced", st.Fenced)
	} else if n.running(id) == nil {
		add(csi.VolumeHealthErrorType_INACCESSIBLE, "ServerDown", "nbdkit is not running for this volume; the node plugin is restarting it")
	} else if why := n.servers.broken(id); why != "" {
		add(csi.VolumeHealthErrorType_INACCESSIBLE, "DeviceDisconnected", why)
	} else if dev, found, err := n.att.Find(ctx, id.key()); err != nil || !found {
		add(csi.VolumeHealthErrorType_INACCESSIBLE, "NotAttached", fmt.Sprintf("no block device is attached (%v)", err))
	} else if !st.Block {
		if m, err := n.mnt.IsMountPoint(st.StagingPath); err != nil || !m {
			add(csi.VolumeHealthErrorType_INACCESSIBLE, "NotMounted", fmt.Sprintf("%s is not mounted from %s", st.StagingPath, dev.Path))
		}
	}
	if url, err := n.volumeURL(id, st); err == nil {
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		inf, err := func() (vb.Info, error) {
			store, err := n.volumeStore(hctx, url)
			if err != nil {
				return vb.Info{}, err
			}
			return vb.Stat(hctx, store, id.Vol)
		}()
		cancel()
		switch {
		case errors.Is(err, vb.ErrNotFound):
			add(csi.VolumeHealthErrorType_DATA_LOSS, "VolumeDeleted", "the volume no longer exists in its store")
		case errors.Is(err, vb.ErrCorrupt), errors.Is(err, vb.ErrBackendState):
			add(csi.VolumeHealthErrorType_DATA_LOSS, "MetadataCorrupt", err.Error())
		case err != nil:
			n.metrics.StoreErrors.WithLabelValues(id.Store).Inc()
			add(csi.VolumeHealthErrorType_INACCESSIBLE, "StoreUnavailable", err.Error())
		case !fenced && !st.ReadOnly && st.Epoch != 0 && inf.Epoch > st.Epoch:
			add(csi.VolumeHealthErrorType_INACCESSIBLE, "Fenced",
				fmt.Sprintf("another owner opened the volume (epoch %d > ours %d); writes here fail", inf.Epoch, st.Epoch))
		}
	}
	if !st.ReadOnly && !fenced { // a fenced volume's WAL is stale, not pending
		bytes, oldest := walPending(n.paths(id).WALDir, id.Vol)
		if bytes > n.opts.DrainLagBytes || (!oldest.IsZero() && time.Since(oldest) > n.opts.DrainLagAge) {
			add(csi.VolumeHealthErrorType_DEGRADED, "DrainLagging",
				fmt.Sprintf("%d bytes written on this node are not in the store yet, the oldest since %s", bytes, oldest.UTC().Format(time.RFC3339)))
		}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}

// Collector returns a Prometheus collector of per-volume node metrics.
func (n *NodeServer) Collector() prometheus.Collector { return volumeCollector{n} }

var (
	descWAL    = prometheus.NewDesc("viperblock_volume_wal_pending_bytes", "Bytes written on this node and not yet in the store.", []string{"volume_id"}, nil)
	descWALAge = prometheus.NewDesc("viperblock_volume_wal_oldest_pending_seconds", "Age of the oldest data written on this node and not yet in the store (0: nothing pending).", []string{"volume_id"}, nil)
	descUp     = prometheus.NewDesc("viperblock_volume_server_up", "1 while the volume's nbdkit runs.", []string{"volume_id"}, nil)
	descIO     = prometheus.NewDesc("viperblock_volume_device_bytes_total", "Bytes read and written through the volume's block device on this node (the kernel's counters, /sys/class/block/DEV/stat).", []string{"volume_id", "op"}, nil)
	descOps    = prometheus.NewDesc("viperblock_volume_device_ops_total", "Read and write requests completed by the volume's block device on this node (the kernel's counters).", []string{"volume_id", "op"}, nil)
	descAbn    = prometheus.NewDesc("viperblock_volume_health_abnormal", "1 while the volume's health on this node (NodeGetVolumeHealth) reports a condition, else 0.", []string{"volume_id"}, nil)
	descCond   = prometheus.NewDesc("viperblock_volume_health_condition", "1 for each condition the volume's health on this node reports: status INACCESSIBLE, DEGRADED or DATA_LOSS, and a reason such as Fenced, StoreUnavailable, DrainLagging.", []string{"volume_id", "status", "reason"}, nil)
)

// healthScrapeTimeout bounds the health checks of one scrape (they read
// the store).
const healthScrapeTimeout = 5 * time.Second

type volumeCollector struct{ n *NodeServer }

func (c volumeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descWAL, descWALAge, descUp, descIO, descOps, descAbn, descCond} {
		ch <- d
	}
	describeEngine(ch)
}

func (c volumeCollector) Collect(ch chan<- prometheus.Metric) {
	ids, _ := c.n.stagedVolumes()
	c.collectHealth(ch, ids)
	c.collectEngine(ch, ids)
	c.collectNode(ch)
	for _, id := range ids {
		st, ok, err := c.n.loadState(id)
		if err != nil || !ok {
			continue
		}
		v := id.String()
		up := 0.0
		if c.n.running(id) != nil {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, v)
		if !st.ReadOnly && st.Fenced == "" {
			bytes, oldest := walPending(c.n.paths(id).WALDir, id.Vol)
			age := 0.0
			if !oldest.IsZero() {
				age = time.Since(oldest).Seconds()
			}
			ch <- prometheus.MustNewConstMetric(descWAL, prometheus.GaugeValue, float64(bytes), v)
			ch <- prometheus.MustNewConstMetric(descWALAge, prometheus.GaugeValue, age, v)
		}
		if s, ok := deviceStat(st.Device); ok {
			ch <- prometheus.MustNewConstMetric(descIO, prometheus.CounterValue, float64(s[2]*512), v, "read")
			ch <- prometheus.MustNewConstMetric(descIO, prometheus.CounterValue, float64(s[6]*512), v, "write")
			ch <- prometheus.MustNewConstMetric(descOps, prometheus.CounterValue, float64(s[0]), v, "read")
			ch <- prometheus.MustNewConstMetric(descOps, prometheus.CounterValue, float64(s[4]), v, "write")
		}
	}
}

// collectHealth reports each volume's NodeGetVolumeHealth as metrics; the
// checks run side by side, within healthScrapeTimeout together.
func (c volumeCollector) collectHealth(ch chan<- prometheus.Metric, ids []volumeID) {
	ctx, cancel := context.WithTimeout(context.Background(), healthScrapeTimeout)
	defer cancel()
	type result struct {
		id volumeID
		h  *csi.VolumeHealth
	}
	out := make(chan result, len(ids))
	sem := make(chan struct{}, 8)
	for _, id := range ids {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			resp, err := c.n.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id.String()})
			if err != nil {
				out <- result{id, nil}
				return
			}
			out <- result{id, resp.GetVolumeHealth()}
		}()
	}
	for range ids {
		r := <-out
		if r.h == nil {
			continue // unstaged meanwhile, or not ours
		}
		v := r.id.String()
		abnormal := 0.0
		seen := map[[2]string]bool{}
		for _, e := range r.h.GetHealthStatuses() {
			abnormal = 1
			k := [2]string{e.GetStatus().String(), e.GetReason()}
			if !seen[k] {
				seen[k] = true
				ch <- prometheus.MustNewConstMetric(descCond, prometheus.GaugeValue, 1, v, k[0], k[1])
			}
		}
		ch <- prometheus.MustNewConstMetric(descAbn, prometheus.GaugeValue, abnormal, v)
	}
}

// deviceStat reads /sys/class/block/<dev>/stat (reads, merges, sectors
// read, ms, writes, merges, sectors written, ...).
func deviceStat(dev string) ([]uint64, bool) {
	if dev == "" {
		return nil, false
	}
	f, err := os.Open(filepath.Join("/sys/class/block", filepath.Base(dev), "stat"))
	if err != nil {
		return nil, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return nil, false
	}
	var out []uint64
	for _, fld := range strings.Fields(sc.Text()) {
		x, err := strconv.ParseUint(fld, 10, 64)
		if err != nil {
			return nil, false
		}
		out = append(out, x)
	}
	return out, len(out) >= 7
}

package driver

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the driver's Prometheus metrics. One set per process; the
// binaries register it with their registry (controller-runtime's for the
// controller).
type Metrics struct {
	// Operations counts CSI calls by method and gRPC code.
	Operations *prometheus.CounterVec
	// Latency observes CSI call durations by method.
	Latency *prometheus.HistogramVec
	// StoreErrors counts the failures of the object store calls the
	// driver makes itself (opening a store, reading a volume's metadata
	// for a health check or an RPC), by store. The volume servers' own
	// requests are viperblock_store_requests_total.
	StoreErrors *prometheus.CounterVec
	// NbdkitRestarts counts nbdkit servers restarted by the healer.
	NbdkitRestarts prometheus.Counter
}

var (
	metricsOnce sync.Once
	metricsSet  *Metrics
)

// DefaultMetrics returns the process's metrics, created on first use.
func DefaultMetrics() *Metrics {
	metricsOnce.Do(func() {
		metricsSet = &Metrics{
			Operations: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: "viperblock", Subsystem: "csi", Name: "operations_total",
				Help: "CSI calls by method and gRPC status code.",
			}, []string{"method", "code"}),
			Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
				Namespace: "viperblock", Subsystem: "csi", Name: "operation_seconds",
				Help:    "Duration of CSI calls by method.",
				Buckets: []float64{.001, .005, .02, .1, .5, 1, 2.5, 5, 10, 30, 60, 120},
			}, []string{"method"}),
			StoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: "viperblock", Subsystem: "csi", Name: "driver_store_errors_total",
				Help: "Failed object store calls the CSI driver makes itself (opening a store, reading a volume's metadata for a health check or an RPC), by store; the volume servers' requests are viperblock_store_requests_total.",
			}, []string{"store"}),
			NbdkitRestarts: prometheus.NewCounter(prometheus.CounterOpts{
				Namespace: "viperblock", Subsystem: "node", Name: "nbdkit_restarts_total",
				Help: "nbdkit servers the node plugin restarted after they died.",
			}),
		}
	})
	return metricsSet
}

// Register registers the metrics (and, for a node, the per-volume
// collector) with reg. Registering twice is harmless.
func (m *Metrics) Register(reg prometheus.Registerer, extra ...prometheus.Collector) {
	for _, c := range append([]prometheus.Collector{m.Operations, m.Latency, m.StoreErrors, m.NbdkitRestarts}, extra...) {
		if err := reg.Register(c); err != nil {
			if _, ok := err.(prometheus.AlreadyRegisteredError); !ok {
				panic(err)
			}
		}
	}
}

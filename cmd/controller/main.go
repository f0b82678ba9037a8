// Command controller is the Viperblock CSI controller plugin: the CSI
// Identity and Controller services on a Unix socket, for the
// external-provisioner, -attacher, -snapshotter and -resizer sidecars.
//
// In a cluster it runs under controller-runtime's manager: leader election
// (only the leader serves CSI, so one controller acts at a time), /healthz
// and /readyz probes and a Prometheus /metrics endpoint. With --standalone
// it runs without Kubernetes (tests, development): no leader election, and
// the same endpoints on a plain HTTP server.
//
//	controller --endpoint unix:///csi/csi.sock --store default=s3://bucket/vols?endpoint=...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/viperblock/viperblock-csi/pkg/driver"
	_ "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

var version = "dev"

func main() {
	var opts driver.Options
	klog.InitFlags(flag.CommandLine)
	opts.AddFlags(flag.CommandLine, false)
	metricsAddr := flag.String("metrics-address", ":8090", "address of the Prometheus /metrics endpoint (\"0\" disables it)")
	healthAddr := flag.String("health-address", ":8091", "address of the /healthz and /readyz endpoints")
	leaderElect := flag.Bool("leader-elect", true, "elect a leader: only the leader serves CSI")
	leaderNS := flag.String("leader-election-namespace", "", "namespace of the leader election lease (default: the pod's)")
	standalone := flag.Bool("standalone", false, "run without Kubernetes: no leader election; metrics and health on a plain HTTP server")
	flag.Parse()
	opts.Version = version
	// The engine logs with log/slog: send it through klog too.
	slog.SetDefault(slog.New(logr.ToSlogHandler(klog.Background())))
	if err := run(&opts, *metricsAddr, *healthAddr, *leaderElect, *leaderNS, *standalone); err != nil {
		klog.ErrorS(err, "controller failed")
		klog.Flush()
		os.Exit(1)
	}
}

func run(opts *driver.Options, metricsAddr, healthAddr string, leaderElect bool, leaderNS string, standalone bool) error {
	if standalone {
		return runStandalone(opts, metricsAddr, healthAddr)
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("no Kubernetes configuration (use --standalone outside a cluster): %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:  healthAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "csi-viperblock-io-controller",
		LeaderElectionNamespace: leaderNS,
	})
	if err != nil {
		return err
	}
	var nodes driver.NodeChecker
	switch opts.NodeCheck {
	case "store":
		nodes = driver.StoreNodeChecker{}
	case "none":
		nodes = driver.AnyNodeChecker{}
	default:
		nodes = KubeNodeChecker{Reader: mgr.GetAPIReader(), Driver: opts.DriverName}
	}
	cs, err := driver.NewControllerServer(opts, nodes, nil)
	if err != nil {
		return err
	}
	defer cs.Close()
	driver.DefaultMetrics().Register(ctrlmetrics.Registry)
	// CSI is served at once (Identity, so probes work on every replica);
	// Controller calls are refused until this replica leads.
	var leading atomic.Bool
	srv, err := driver.NewServer(opts.Endpoint, opts, driver.Services{Controller: cs, ControllerActive: leading.Load}, nil)
	if err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.Add(grpcRunnable{srv}); err != nil {
		return err
	}
	if err := mgr.Add(leaderRunnable{&leading}); err != nil {
		return err
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}

// grpcRunnable serves CSI on every replica.
type grpcRunnable struct{ srv *driver.Server }

var _ manager.LeaderElectionRunnable = grpcRunnable{}

func (g grpcRunnable) NeedLeaderElection() bool { return false }

func (g grpcRunnable) Start(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- g.srv.Serve() }()
	select {
	case <-ctx.Done():
		g.srv.Stop()
		return nil
	case err := <-errc:
		return err
	}
}

// leaderRunnable runs while this replica leads: it opens the Controller
// service. Losing the lease ends the process (controller-runtime exits),
// so the flag never needs to drop back.
type leaderRunnable struct{ leading *atomic.Bool }

func (l leaderRunnable) NeedLeaderElection() bool { return true }

func (l leaderRunnable) Start(ctx context.Context) error {
	klog.InfoS("leading: serving the Controller service")
	l.leading.Store(true)
	<-ctx.Done()
	l.leading.Store(false)
	return nil
}

func runStandalone(opts *driver.Options, metricsAddr, healthAddr string) error {
	nodes := driver.NodeChecker(driver.StoreNodeChecker{})
	switch opts.NodeCheck {
	case "none":
		nodes = driver.AnyNodeChecker{}
	case "kubernetes":
		return errors.New("--node-check=kubernetes needs a cluster (drop --standalone)")
	}
	cs, err := driver.NewControllerServer(opts, nodes, nil)
	if err != nil {
		return err
	}
	defer cs.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	driver.DefaultMetrics().Register(reg)
	srv, err := driver.NewServer(opts.Endpoint, opts, driver.Services{Controller: cs}, nil)
	if err != nil {
		return err
	}
	serveHTTP(metricsAddr, healthAddr, reg)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; srv.Stop() }()
	return srv.Serve()
}

// serveHTTP serves /metrics and the health endpoints in the background.
func serveHTTP(metricsAddr, healthAddr string, reg *prometheus.Registry) {
	ok := func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) }
	listen := func(addr string, mux *http.ServeMux) {
		if addr == "" || addr == "0" {
			return
		}
		go func() {
			if err := http.ListenAndServe(addr, mux); err != nil {
				klog.ErrorS(err, "HTTP endpoint failed", "address", addr)
			}
		}()
	}
	if metricsAddr == healthAddr {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", ok)
		mux.HandleFunc("/readyz", ok)
		listen(metricsAddr, mux)
		return
	}
	m := http.NewServeMux()
	m.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	listen(metricsAddr, m)
	h := http.NewServeMux()
	h.HandleFunc("/healthz", ok)
	h.HandleFunc("/readyz", ok)
	listen(healthAddr, h)
}

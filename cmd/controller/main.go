// Command controller is the Viperblock CSI controller plugin: the CSI
// Identity and Controller services on a Unix socket, for the
// external-provisioner, -attacher, -snapshotter and -resizer sidecars.
//
// In a cluster it runs under controller-runtime's manager: /healthz and
// /readyz probes and a Prometheus /metrics endpoint. It elects no leader:
// every replica serves every CSI call, and the sidecars next to it, which
// run with --leader-election, choose the replica that acts. (The store's
// compare-and-swap makes two replicas acting at once during the sidecars'
// hand-over safe; see pkg/driver's doc, "Controller replicas".) With
// --standalone it runs without Kubernetes (tests, development), with the
// same endpoints on a plain HTTP server.
//
// /healthz answers while the process runs; /readyz while the CSI socket
// serves.
//
//	controller --endpoint unix:///csi/csi.sock --store default=s3://bucket/vols?endpoint=...
//	controller --version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/viperblock/viperblock-csi/internal/logging"
	"github.com/viperblock/viperblock-csi/internal/version"
	"github.com/viperblock/viperblock-csi/pkg/driver"
	_ "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

func main() {
	var opts driver.Options
	klog.InitFlags(flag.CommandLine)
	logFormat := logging.AddFlags(flag.CommandLine)
	opts.AddFlags(flag.CommandLine, false)
	metricsAddr := flag.String("metrics-address", ":8090", "address of the Prometheus /metrics endpoint (\"0\" disables it)")
	healthAddr := flag.String("health-address", ":8091", "address of the /healthz and /readyz endpoints")
	standalone := flag.Bool("standalone", false, "run without Kubernetes: metrics and health on a plain HTTP server")
	showVersion := flag.Bool("version", false, "print the version and exit")
	// Deprecated: the driver elects no leader any more (the sidecars do).
	// Still accepted so that manifests that pass them keep working.
	flag.Bool("leader-elect", false, "deprecated and ignored: every replica serves; the sidecars elect the leader")
	flag.String("leader-election-namespace", "", "deprecated and ignored")
	flag.Parse()
	if *showVersion {
		fmt.Println(version.Long("controller"))
		return
	}
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "leader-elect" || f.Name == "leader-election-namespace" {
			klog.InfoS("flag is deprecated and ignored: the controller elects no leader; every replica serves and the sidecars' --leader-election picks the one that acts", "flag", "--"+f.Name)
		}
	})
	opts.Version = version.String()
	// klog in the chosen format; the engine's log/slog through klog too.
	if err := logging.Setup(*logFormat); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := run(&opts, *metricsAddr, *healthAddr, *standalone); err != nil {
		klog.ErrorS(err, "controller failed")
		klog.Flush()
		os.Exit(1)
	}
}

func run(opts *driver.Options, metricsAddr, healthAddr string, standalone bool) error {
	if standalone {
		return runStandalone(opts, metricsAddr, healthAddr)
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("no Kubernetes configuration (use --standalone outside a cluster): %w", err)
	}
	ctrl.SetLogger(klog.Background()) // controller-runtime's logs in --logging-format too
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Metrics:                metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress: healthAddr,
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
	if err := checkStores(cs); err != nil {
		return err
	}
	driver.DefaultMetrics().Register(ctrlmetrics.Registry)
	srv, err := driver.NewServer(opts.Endpoint, opts, driver.Services{Controller: cs}, nil)
	if err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("csi", func(r *http.Request) error { return srv.Ready(r.Context()) }); err != nil {
		return err
	}
	if err := mgr.Add(grpcRunnable{srv}); err != nil {
		return err
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}

// grpcRunnable serves CSI (on every replica: it needs no leader).
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
	if err := checkStores(cs); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	driver.DefaultMetrics().Register(reg)
	srv, err := driver.NewServer(opts.Endpoint, opts, driver.Services{Controller: cs}, nil)
	if err != nil {
		return err
	}
	serveHTTP(metricsAddr, healthAddr, reg, srv)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; srv.Stop() }()
	return srv.Serve()
}

// serveHTTP serves /metrics and the health endpoints in the background.
func serveHTTP(metricsAddr, healthAddr string, reg *prometheus.Registry, srv *driver.Server) {
	ok := func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) }
	ready := func(w http.ResponseWriter, r *http.Request) {
		if err := srv.Ready(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	}
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
		mux.HandleFunc("/readyz", ready)
		listen(metricsAddr, mux)
		return
	}
	m := http.NewServeMux()
	m.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	listen(metricsAddr, m)
	h := http.NewServeMux()
	h.HandleFunc("/healthz", ok)
	h.HandleFunc("/readyz", ready)
	listen(healthAddr, h)
}

// checkStores runs the store self-test on every configured S3 store at
// start: fencing depends on the store's conditional writes, so the
// controller refuses to start on a store that ignores them (vblock store
// check runs the same test).
func checkStores(cs *driver.ControllerServer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return cs.CheckStores(ctx)
}

// Command node is the Viperblock CSI node plugin: the CSI Identity and Node
// services on a Unix socket, for the kubelet. For each staged volume it
// runs one `nbdkit -f` serving the volume with the viperblock plugin, its
// WAL under --wal-dir, attached as a block device (kernel NBD, or nbdfuse
// and a loop device) and, for filesystem volumes, mounted at the staging
// path.
//
// nbdkit processes and attachments outlive this process: on start-up the
// healer re-adopts them (or restarts them), so a restart of the node plugin
// is invisible to mounted filesystems. Stop it with SIGTERM or SIGINT: it
// stops serving gRPC and exits, and staged volumes keep running (nothing is
// stopped, unstaged, drained or detached). For that to hold in a
// container, nbdkit and nbdfuse must not die with the container, whose
// runtime kills every process in the container's cgroup: run the DaemonSet
// privileged with hostPID, mount the host's /sys/fs/cgroup (e.g. at
// /host/sys/fs/cgroup) and pass --cgroup-root /host/sys/fs/cgroup
// --server-cgroup viperblock-servers: every nbdkit keeper and nbdfuse is
// moved into that cgroup right after it starts. nbdkit's log lines (the
// engine's logs) are re-logged through klog with the volume's handle as
// volume_id, in --logging-format (text or json).
//
//	node --endpoint unix:///csi/csi.sock --node-id $(NODE_NAME) \
//	     --store default=s3://bucket/vols?endpoint=... --plugin /usr/lib/viperblock/nbdkit-viperblock-plugin.so
//	node --version
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/internal/logging"
	"github.com/viperblock/viperblock-csi/internal/version"
	"github.com/viperblock/viperblock-csi/pkg/driver"
	_ "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

func main() {
	var opts driver.Options
	klog.InitFlags(flag.CommandLine)
	logFormat := logging.AddFlags(flag.CommandLine)
	opts.AddFlags(flag.CommandLine, true)
	httpAddr := flag.String("http-address", ":8092", "address of /metrics and /healthz (\"0\" disables them)")
	var attachWrapper []string
	flag.Func("attach-wrapper", "command prefix for nbdfuse, space-separated (--server-cgroup is the usual way to have nbdfuse outlive the node plugin's container)", func(v string) error {
		attachWrapper = strings.Fields(v)
		return nil
	})
	events := flag.Bool("volume-events", true, "post Kubernetes Events on a volume's PersistentVolumeClaim when its health on this node changes (fenced, drain lagging, store unavailable); needs the in-cluster API credentials and RBAC to get and list persistentvolumes and create events")
	healthInterval := flag.Duration("health-check-interval", time.Minute, "how often each staged volume's health is checked for --volume-events")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(version.Long("node"))
		return
	}
	opts.Version = version.String()
	// klog in the chosen format; the engine's log/slog through klog too.
	if err := logging.Setup(*logFormat); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := run(&opts, *httpAddr, attachWrapper, *events, *healthInterval); err != nil {
		klog.ErrorS(err, "node plugin failed")
		klog.Flush()
		os.Exit(1)
	}
}

func run(opts *driver.Options, httpAddr string, attachWrapper []string, events bool, healthInterval time.Duration) error {
	if err := opts.ValidateNode(); err != nil {
		return err
	}
	// The credentials file must outlive this process's container: the
	// volume servers read it. The state directory is on the host.
	secret, err := opts.SetupStoreSecret(filepath.Join(opts.StateDir, "credentials"))
	if err != nil {
		return err
	}
	go secret.Run(context.Background())
	// Fail now, not at the first NodeStage, if the servers' cgroup is
	// unusable.
	place, err := driver.ServerPlacement(opts)
	if err != nil {
		return err
	}
	att, err := newAttacher(opts.Attacher, opts.AttachDir, attachWrapper, place)
	if err != nil {
		return err
	}
	deps := driver.NodeDeps{Attacher: att}
	if events {
		deps.Kube = kubeClient()
	}
	ns, err := driver.NewNodeServer(opts, deps)
	if err != nil {
		return err
	}
	defer ns.Close()
	go ns.WatchHealth(context.Background(), healthInterval)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	// Fencing depends on the store's conditional writes: refuse to start
	// on an S3 store that ignores them (vblock store check runs the same).
	if err := ns.CheckStores(ctx); err != nil {
		cancel()
		return err
	}
	ns.Register(ctx)
	ns.Heal(ctx)
	cancel()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	driver.DefaultMetrics().Register(reg, ns.Collector())
	if httpAddr != "" && httpAddr != "0" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
		go func() {
			if err := http.ListenAndServe(httpAddr, mux); err != nil {
				klog.ErrorS(err, "HTTP endpoint failed", "address", httpAddr)
			}
		}()
	}
	srv, err := driver.NewServer(opts.Endpoint, opts, driver.Services{Node: ns}, nil)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		klog.InfoS("stopping; staged volumes keep running", "signal", s.String())
		srv.Stop()
	}()
	return srv.Serve()
}

// kubeClient is the in-cluster API client for volume health events, or nil
// (logged) outside a cluster or without a token.
func kubeClient() kubernetes.Interface {
	cfg, err := rest.InClusterConfig()
	if err == nil {
		var c *kubernetes.Clientset
		if c, err = kubernetes.NewForConfig(cfg); err == nil {
			return c
		}
	}
	klog.InfoS("no Kubernetes API access: volume health events are not posted (--volume-events=false silences this)", "err", err)
	return nil
}

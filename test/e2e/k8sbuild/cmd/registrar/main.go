// Command registrar registers a CSI node plugin with the kubelet's plugin
// registry, as node-driver-registrar does in a cluster (that sidecar is not
// on the Go module proxy, so the e2e harness builds this instead). It takes
// node-driver-registrar's flags, so the harness runs it with the args of
// the DaemonSet's node-driver-registrar container.
//
// It asks the driver for its name over the CSI socket (GetPluginInfo, retried
// until the driver answers), then serves the kubelet's registration API on
// <plugin-registration-path>/<driver>-reg.sock. The kubelet discovers the
// socket, calls GetInfo and dials the driver's endpoint itself. When the
// registrar stops it removes its socket, and the kubelet unregisters the
// driver.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	reg "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

func main() {
	csiAddress := flag.String("csi-address", "", "the driver's CSI socket, as a path or unix:// URL")
	kubeletPath := flag.String("kubelet-registration-path", "", "the CSI socket path the kubelet dials (default: --csi-address)")
	regDir := flag.String("plugin-registration-path", "/registration", "the kubelet's plugin registry directory")
	httpEndpoint := flag.String("http-endpoint", "", "address for /healthz (200 once the kubelet registered the plugin); empty: none")
	wait := flag.Duration("timeout", 2*time.Minute, "how long to wait for the driver to answer GetPluginInfo")
	flag.Int("v", 0, "log verbosity (accepted for node-driver-registrar compatibility)")
	flag.Parse()
	if *csiAddress == "" {
		log.Fatal("registrar: --csi-address is required")
	}
	sock := trimUnix(*csiAddress)
	if *kubeletPath == "" {
		*kubeletPath = sock
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	name, err := driverName(ctx, sock, *wait)
	if err != nil {
		log.Fatalf("registrar: %v", err)
	}
	regSock := filepath.Join(*regDir, name+"-reg.sock")
	if err := os.MkdirAll(*regDir, 0o750); err != nil {
		log.Fatalf("registrar: %v", err)
	}
	if err := os.Remove(regSock); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Fatalf("registrar: %v", err)
	}
	lis, err := net.Listen("unix", regSock)
	if err != nil {
		log.Fatalf("registrar: %v", err)
	}

	failed := make(chan string, 1)
	r := &registration{name: name, endpoint: *kubeletPath, failed: failed}
	srv := grpc.NewServer()
	reg.RegisterRegistrationServer(srv, r)
	if *httpEndpoint != "" {
		go serveHealth(*httpEndpoint, r)
	}
	go func() {
		if err := srv.Serve(lis); err != nil {
			log.Printf("registrar: serve: %v", err)
		}
	}()
	log.Printf("registrar: serving registration for %s (endpoint %s) on %s", name, *kubeletPath, regSock)

	code := 0
	select {
	case <-ctx.Done():
	case msg := <-failed:
		log.Printf("registrar: kubelet rejected the plugin: %s", msg)
		code = 1
	}
	srv.Stop()
	_ = os.Remove(regSock)
	os.Exit(code)
}

// driverName asks the driver at sock for its name, retrying until it answers
// or the timeout passes.
func driverName(ctx context.Context, sock string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	id := csi.NewIdentityClient(conn)
	for {
		callCtx, callCancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := id.GetPluginInfo(callCtx, &csi.GetPluginInfoRequest{})
		callCancel()
		if err == nil && resp.GetName() != "" {
			return resp.GetName(), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no GetPluginInfo answer from %s: %v (last error: %v)", sock, ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func trimUnix(s string) string {
	const p = "unix://"
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}

func serveHealth(addr string, r *registration) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !r.registered.Load() {
			http.Error(w, "not registered with the kubelet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	log.Printf("registrar: health: %v", http.ListenAndServe(addr, mux))
}

// registration answers the kubelet's plugin watcher.
type registration struct {
	reg.UnimplementedRegistrationServer
	name       string
	endpoint   string
	failed     chan<- string
	registered atomic.Bool
}

func (r *registration) GetInfo(context.Context, *reg.InfoRequest) (*reg.PluginInfo, error) {
	return &reg.PluginInfo{Type: reg.CSIPlugin, Name: r.name, Endpoint: r.endpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

func (r *registration) NotifyRegistrationStatus(_ context.Context, s *reg.RegistrationStatus) (*reg.RegistrationStatusResponse, error) {
	if s.PluginRegistered {
		r.registered.Store(true)
		log.Printf("registrar: kubelet registered %s", r.name)
	} else {
		select {
		case r.failed <- s.Error:
		default:
		}
	}
	return &reg.RegistrationStatusResponse{}, nil
}

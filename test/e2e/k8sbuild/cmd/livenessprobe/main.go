// Command livenessprobe answers the kubelet's liveness probes for a CSI
// driver's container, as the livenessprobe sidecar does in a cluster (that
// sidecar is not on the Go module proxy, so the e2e harness builds this
// instead and imports it under the sidecar's image name). It takes the
// sidecar's flags, so the pods run it with the args the manifests give.
//
// GET /healthz calls the driver's Identity Probe over the CSI socket: 200
// when the driver answers ready, 500 with the reason otherwise.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "the driver's CSI socket, as a path or unix:// URL")
	port := flag.String("health-port", "9808", "TCP port for /healthz")
	addr := flag.String("http-endpoint", "", "address for /healthz (overrides --health-port)")
	timeout := flag.Duration("probe-timeout", time.Second, "how long a Probe call may take")
	flag.Int("v", 0, "log verbosity (accepted for compatibility)")
	flag.Parse()

	target := "unix://" + strings.TrimPrefix(*csiAddress, "unix://")
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", strings.TrimPrefix(a, "unix://"))
		}))
	if err != nil {
		log.Fatalf("livenessprobe: %v", err)
	}
	id := csi.NewIdentityClient(conn)

	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), *timeout)
		defer cancel()
		resp, err := id.Probe(ctx, &csi.ProbeRequest{})
		switch {
		case err != nil:
			http.Error(w, fmt.Sprintf("probe: %v", err), http.StatusInternalServerError)
		case resp.GetReady() != nil && !resp.GetReady().GetValue():
			http.Error(w, "driver not ready", http.StatusInternalServerError)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	listen := *addr
	if listen == "" {
		listen = ":" + *port
	}
	log.Printf("livenessprobe: /healthz on %s probes %s", listen, target)
	log.Fatal(http.ListenAndServe(listen, nil))
}

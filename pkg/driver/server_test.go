package driver

import (
	"bytes"
	"context"
	"flag"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
)

// Secrets never reach the logs: not in requests, not in errors.
func TestSecretsNotLogged(t *testing.T) {
	var buf bytes.Buffer
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.Set("v", "5")
	fs.Set("logtostderr", "false")
	klog.SetOutput(&buf)
	defer func() { klog.SetOutput(nil); fs.Set("logtostderr", "true"); fs.Set("v", "0") }()

	req := &csi.NodeStageVolumeRequest{VolumeId: "default/v", Secrets: map[string]string{"awsSecretAccessKey": "hunter2-secret"},
		VolumeCapability: mountCapability(snw), PublishContext: map[string]string{"node": "n1"}}
	h := func(ctx context.Context, req any) (any, error) { return nil, invalidArg("bad") }
	interceptor(DefaultMetrics())(context.Background(), req, &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Node/NodeStageVolume"}, h)
	klog.Flush()
	out := buf.String()
	if strings.Contains(out, "hunter2") {
		t.Fatalf("a secret was logged:\n%s", out)
	}
	if !strings.Contains(out, "awsSecretAccessKey") || !strings.Contains(out, "***") || !strings.Contains(out, "NodeStageVolume") {
		t.Fatalf("log does not show the redacted request:\n%s", out)
	}
	if req.Secrets["awsSecretAccessKey"] != "hunter2-secret" {
		t.Fatal("redaction modified the request")
	}
}

func TestSocketPath(t *testing.T) {
	for in, want := range map[string]string{"unix:///csi/csi.sock": "/csi/csi.sock", "unix:/csi/csi.sock": "/csi/csi.sock", "/x.sock": "/x.sock"} {
		if got, err := socketPath(in); err != nil || got != want {
			t.Errorf("socketPath(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"tcp://1.2.3.4:5", "unix://relative", "csi.sock"} {
		if _, err := socketPath(in); err == nil {
			t.Errorf("socketPath(%q) accepted", in)
		}
	}
}

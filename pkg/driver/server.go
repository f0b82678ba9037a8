package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"k8s.io/klog/v2"
)

// Server serves CSI services on a Unix socket.
type Server struct {
	srv      *grpc.Server
	lis      net.Listener
	path     string
	serving  atomic.Bool
	identity *IdentityServer
}

// Services are the CSI services one Server offers; nil ones are left out.
// Every replica of the controller serves every call: the sidecars' own
// leader election picks the replica that acts (see the package doc,
// "Controller replicas").
type Services struct {
	Controller *ControllerServer
	Node       *NodeServer
}

// NewServer listens on endpoint (unix:///path or unix:/path or a bare
// path), removing a stale socket first, and registers the services.
func NewServer(endpoint string, opts *Options, svc Services, m *Metrics) (*Server, error) {
	p, err := socketPath(endpoint)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", p, err)
	}
	lis, err := net.Listen("unix", p)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", p, err)
	}
	if m == nil {
		m = DefaultMetrics()
	}
	s := &Server{lis: lis, path: p}
	s.srv = grpc.NewServer(grpc.ChainUnaryInterceptor(interceptor(m)))
	s.identity = &IdentityServer{opts: opts, ready: &s.serving}
	if svc.Node != nil {
		s.identity.probe = svc.Node.probe
	}
	csi.RegisterIdentityServer(s.srv, s.identity)
	if svc.Controller != nil {
		csi.RegisterControllerServer(s.srv, svc.Controller)
	}
	if svc.Node != nil {
		csi.RegisterNodeServer(s.srv, svc.Node)
	}
	return s, nil
}

// Ready reports nil while the server serves CSI and its Probe passes (on a
// node: nbdkit and the plugin are usable), for /readyz.
func (s *Server) Ready(ctx context.Context) error {
	resp, err := s.identity.Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return err
	}
	if !resp.GetReady().GetValue() {
		return errors.New("not serving CSI")
	}
	return nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Serve serves until Stop. It returns nil after Stop.
func (s *Server) Serve() error {
	s.serving.Store(true)
	klog.InfoS("serving CSI", "socket", s.path)
	err := s.srv.Serve(s.lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Stop stops serving: in-flight calls get a few seconds to finish.
func (s *Server) Stop() {
	s.serving.Store(false)
	done := make(chan struct{})
	go func() { s.srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.srv.Stop()
	}
	os.Remove(s.path)
}

func socketPath(endpoint string) (string, error) {
	if strings.HasPrefix(endpoint, "/") {
		return endpoint, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" {
		return "", fmt.Errorf("endpoint %q: want unix:///path/to/socket", endpoint)
	}
	p := u.Path
	if p == "" {
		p = u.Opaque
	}
	if p == "" || !path.IsAbs(p) {
		return "", fmt.Errorf("endpoint %q: want an absolute socket path", endpoint)
	}
	return p, nil
}

// interceptor logs each call (secrets redacted), counts it and times it.
func interceptor(m *Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		method := path.Base(info.FullMethod)
		quiet := method == "Probe" || method == "NodeGetCapabilities" || method == "ControllerGetCapabilities" ||
			method == "GetPluginInfo" || method == "GetPluginCapabilities" || method == "NodeGetVolumeStats" ||
			method == "NodeGetVolumeHealth"
		if quiet {
			klog.V(5).InfoS("call", "method", method, "request", redacted(req))
		} else {
			klog.V(2).InfoS("call", "method", method, "request", redacted(req))
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		took := time.Since(start)
		code := status.Code(err)
		m.Operations.WithLabelValues(method, code.String()).Inc()
		m.Latency.WithLabelValues(method).Observe(took.Seconds())
		switch {
		case err != nil:
			klog.ErrorS(err, "call failed", "method", method, "code", code.String(), "took", took.Round(time.Millisecond))
		case quiet:
			klog.V(5).InfoS("call done", "method", method, "took", took.Round(time.Millisecond))
		default:
			klog.V(2).InfoS("call done", "method", method, "took", took.Round(time.Millisecond), "response", redacted(resp))
		}
		return resp, err
	}
}

// redacted renders a CSI message for a log line with every secrets map
// (at any depth) replaced by its keys and "***".
func redacted(v any) string {
	msg, ok := v.(proto.Message)
	if !ok || msg == nil {
		return fmt.Sprint(v)
	}
	c := proto.Clone(msg)
	redactSecrets(c.ProtoReflect())
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(c)
	if err != nil {
		return "<unprintable>"
	}
	return string(b)
}

func redactSecrets(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap() && (fd.Name() == "secrets" || isSecretField(fd)):
			mp := m.Mutable(fd).Map()
			mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				mp.Set(k, protoreflect.ValueOfString("***"))
				return true
			})
		case fd.Kind() == protoreflect.StringKind && isSecretField(fd) && !fd.IsList() && !fd.IsMap():
			m.Set(fd, protoreflect.ValueOfString("***"))
		case fd.Message() != nil && fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				redactSecrets(l.Get(i).Message())
			}
		case fd.Message() != nil && !fd.IsMap():
			redactSecrets(v.Message())
		}
		return true
	})
}

// isSecretField reports fields marked csi_secret in the CSI proto.
func isSecretField(fd protoreflect.FieldDescriptor) bool {
	opts := fd.Options()
	if opts == nil {
		return false
	}
	return proto.HasExtension(opts, csi.E_CsiSecret) && proto.GetExtension(opts, csi.E_CsiSecret).(bool)
}

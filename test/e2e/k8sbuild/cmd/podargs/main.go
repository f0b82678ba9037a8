// Command podargs turns one container of a rendered Deployment or DaemonSet
// into the environment and arguments of a host process, so the e2e harness
// runs the driver and its sidecars with the very flags deploy/kubernetes
// gives them.
//
//	podargs -f rendered.yaml -kind DaemonSet -container node -print args \
//	    -node vm -set VIPERBLOCK_STORE=file:///tmp/store \
//	    -map /var/lib/kubelet=/tmp/run/kubelet -emptydir /tmp/run/pod
//
// The environment is resolved as the kubelet does it: envFrom ConfigMaps,
// then env (value, fieldRef, ConfigMap and Secret keys from the same file),
// then -set overrides. $(VAR) in args and env values expands from it.
//
// An argument whose value is an absolute path (or unix:// socket) is moved
// to the host: a path under one of the container's volumeMounts becomes the
// volume's hostPath (or <emptydir>/<volume> for an emptyDir), a path under
// none is taken as a host path already; then the longest matching -map
// prefix rewrites it.
//
// Flags that bind a TCP port (--http-endpoint=:8080, --*-address=:8080,
// --health-port=9808) move to -listen-host and port + -listen-offset, so
// host processes neither collide nor listen beyond loopback.
//
// Output is one item per line: KEY=VALUE for -print env, one argument for
// -print args. -print manifests prints every object but those of the kinds
// in -exclude, as a YAML stream.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	file := flag.String("f", "", "rendered manifests (kustomize build output)")
	kind := flag.String("kind", "", "Deployment or DaemonSet")
	name := flag.String("name", "", "object name (default: the only object of that kind)")
	ctr := flag.String("container", "", "container name")
	print := flag.String("print", "args", "args or env")
	node := flag.String("node", "localhost", "value of spec.nodeName")
	emptyDir := flag.String("emptydir", "", "host directory under which emptyDir volumes live")
	offset := flag.Int("listen-offset", 0, "added to the port of flags that listen on one")
	host := flag.String("listen-host", "127.0.0.1", "host for flags that listen on a port")
	exclude := flag.String("exclude", "Deployment,DaemonSet", "kinds -print manifests leaves out (comma-separated)")
	var sets, maps multi
	flag.Var(&sets, "set", "KEY=VALUE environment override (repeatable)")
	flag.Var(&maps, "map", "HOSTPREFIX=NEWPREFIX rewrite of host paths (repeatable)")
	flag.Parse()
	var err error
	if *print == "manifests" {
		err = manifests(*file, strings.Split(*exclude, ","), os.Stdout)
	} else {
		lis := listen{offset: *offset, host: *host}
		err = run(*file, *kind, *name, *ctr, *print, *node, *emptyDir, sets, maps, lis, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "podargs:", err)
		os.Exit(1)
	}
}

type doc struct {
	raw  []byte
	kind string
	name string
	ns   string
}

func readDocs(path string) ([]doc, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs []doc
	for {
		b, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(b, &meta); err != nil {
			return nil, err
		}
		if meta.Kind != "" {
			docs = append(docs, doc{raw: b, kind: meta.Kind, name: meta.Metadata.Name, ns: meta.Metadata.Namespace})
		}
	}
}

func manifests(file string, exclude []string, w io.Writer) error {
	docs, err := readDocs(file)
	if err != nil {
		return err
	}
	for _, d := range docs {
		skip := false
		for _, k := range exclude {
			skip = skip || k == d.kind
		}
		if !skip {
			fmt.Fprintf(w, "---\n%s\n", bytes.TrimSpace(d.raw))
		}
	}
	return nil
}

func run(file, kind, name, ctrName, what, node, emptyDir string, sets, maps []string, lis listen, w io.Writer) error {
	docs, err := readDocs(file)
	if err != nil {
		return err
	}
	var pod *corev1.PodSpec
	var podNS, podName string
	for _, d := range docs {
		if d.kind != kind || (name != "" && d.name != name) {
			continue
		}
		if pod != nil {
			return fmt.Errorf("more than one %s in %s: pass -name", kind, file)
		}
		podNS, podName = d.ns, d.name
		switch kind {
		case "Deployment":
			var o appsv1.Deployment
			if err := yaml.Unmarshal(d.raw, &o); err != nil {
				return err
			}
			pod = &o.Spec.Template.Spec
		case "DaemonSet":
			var o appsv1.DaemonSet
			if err := yaml.Unmarshal(d.raw, &o); err != nil {
				return err
			}
			pod = &o.Spec.Template.Spec
		default:
			return fmt.Errorf("kind %s: want Deployment or DaemonSet", kind)
		}
	}
	if pod == nil {
		return fmt.Errorf("no %s %s in %s", kind, name, file)
	}
	var c *corev1.Container
	for i := range pod.Containers {
		if pod.Containers[i].Name == ctrName {
			c = &pod.Containers[i]
		}
	}
	if c == nil {
		return fmt.Errorf("%s %s has no container %q", kind, podName, ctrName)
	}

	env, err := resolveEnv(docs, c, podNS, podName, node, sets)
	if err != nil {
		return err
	}
	switch what {
	case "env":
		keys := make([]string, 0, len(env))
		for k := range env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "%s=%s\n", k, env[k])
		}
	case "args":
		tr := translator{pod: pod, c: c, emptyDir: emptyDir, maps: parseMaps(maps)}
		for _, a := range c.Args {
			fmt.Fprintln(w, lis.arg(tr.arg(expand(a, env))))
		}
	default:
		return fmt.Errorf("-print %s: want args or env", what)
	}
	return nil
}

func resolveEnv(docs []doc, c *corev1.Container, ns, podName, node string, sets []string) (map[string]string, error) {
	configMaps := map[string]map[string]string{}
	secrets := map[string]map[string]string{}
	for _, d := range docs {
		switch d.kind {
		case "ConfigMap":
			var cm corev1.ConfigMap
			if err := yaml.Unmarshal(d.raw, &cm); err != nil {
				return nil, err
			}
			configMaps[cm.Name] = cm.Data
		case "Secret":
			var s corev1.Secret
			if err := yaml.Unmarshal(d.raw, &s); err != nil {
				return nil, err
			}
			m := map[string]string{}
			for k, v := range s.Data {
				m[k] = string(v)
			}
			for k, v := range s.StringData {
				m[k] = v
			}
			secrets[s.Name] = m
		}
	}
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil {
			for k, v := range configMaps[ef.ConfigMapRef.Name] {
				env[ef.Prefix+k] = v
			}
		}
		if ef.SecretRef != nil {
			for k, v := range secrets[ef.SecretRef.Name] {
				env[ef.Prefix+k] = v
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = expand(e.Value, env)
			continue
		}
		switch vf := e.ValueFrom; {
		case vf.FieldRef != nil:
			switch vf.FieldRef.FieldPath {
			case "spec.nodeName":
				env[e.Name] = node
			case "metadata.namespace":
				env[e.Name] = ns
			case "metadata.name":
				env[e.Name] = podName + "-host"
			case "status.podIP", "status.hostIP":
				env[e.Name] = "127.0.0.1"
			default:
				return nil, fmt.Errorf("env %s: fieldRef %s is not supported", e.Name, vf.FieldRef.FieldPath)
			}
		case vf.ConfigMapKeyRef != nil:
			if v, ok := configMaps[vf.ConfigMapKeyRef.Name][vf.ConfigMapKeyRef.Key]; ok {
				env[e.Name] = v
			}
		case vf.SecretKeyRef != nil:
			if v, ok := secrets[vf.SecretKeyRef.Name][vf.SecretKeyRef.Key]; ok {
				env[e.Name] = v
			} else if vf.SecretKeyRef.Optional == nil || !*vf.SecretKeyRef.Optional {
				return nil, fmt.Errorf("env %s: Secret %s has no key %s", e.Name, vf.SecretKeyRef.Name, vf.SecretKeyRef.Key)
			}
		}
	}
	for _, s := range sets {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return nil, fmt.Errorf("-set %q: want KEY=VALUE", s)
		}
		env[k] = v
	}
	return env, nil
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expand replaces $(VAR) with its value; unknown references stay, as the
// kubelet leaves them.
func expand(s string, env map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := env[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

type prefixMap struct{ from, to string }

func parseMaps(maps []string) []prefixMap {
	var out []prefixMap
	for _, m := range maps {
		from, to, _ := strings.Cut(m, "=")
		out = append(out, prefixMap{filepath.Clean(from), filepath.Clean(to)})
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i].from) > len(out[j].from) })
	return out
}

type translator struct {
	pod      *corev1.PodSpec
	c        *corev1.Container
	emptyDir string
	maps     []prefixMap
}

// arg moves the path in --flag=/path, --flag=unix:///path or /path.
func (t translator) arg(a string) string {
	prefix, val := "", a
	if strings.HasPrefix(a, "-") {
		f, v, ok := strings.Cut(a, "=")
		if !ok {
			return a
		}
		prefix, val = f+"=", v
	}
	scheme := ""
	if strings.HasPrefix(val, "unix://") {
		scheme, val = "unix://", strings.TrimPrefix(val, "unix://")
	}
	if !strings.HasPrefix(val, "/") {
		return a
	}
	return prefix + scheme + t.path(val)
}

func under(p, dir string) (string, bool) {
	dir = filepath.Clean(dir)
	if p == dir {
		return "", true
	}
	if dir == "/" {
		return p, true
	}
	if strings.HasPrefix(p, dir+"/") {
		return p[len(dir):], true
	}
	return "", false
}

func (t translator) path(p string) string {
	p = filepath.Clean(p)
	host := p
	best := -1
	for _, m := range t.c.VolumeMounts {
		rest, ok := under(p, m.MountPath)
		if !ok || len(m.MountPath) <= best {
			continue
		}
		for _, v := range t.pod.Volumes {
			if v.Name != m.Name {
				continue
			}
			switch {
			case v.HostPath != nil:
				host, best = filepath.Join(v.HostPath.Path, m.SubPath)+rest, len(m.MountPath)
			case v.EmptyDir != nil && t.emptyDir != "":
				host, best = filepath.Join(t.emptyDir, v.Name, m.SubPath)+rest, len(m.MountPath)
			}
		}
	}
	for _, m := range t.maps {
		if rest, ok := under(host, m.from); ok {
			return m.to + rest
		}
	}
	return host
}

// listen moves flags that bind a TCP port.
type listen struct {
	offset int
	host   string
}

func (l listen) arg(a string) string {
	if l.offset == 0 || !strings.HasPrefix(a, "-") {
		return a
	}
	flagName, val, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
	if !ok {
		return a
	}
	dashes := a[:len(a)-len(strings.TrimLeft(a, "-"))]
	var port int
	switch {
	case flagName == "health-port":
		if _, err := fmt.Sscanf(val, "%d", &port); err != nil {
			return a
		}
		return fmt.Sprintf("%s%s=%d", dashes, flagName, port+l.offset)
	case strings.HasSuffix(flagName, "-endpoint") || strings.HasSuffix(flagName, "-address"):
		if strings.Contains(val, "/") {
			return a // a socket
		}
		_, p, ok := strings.Cut(val, ":")
		if !ok {
			return a
		}
		if _, err := fmt.Sscanf(p, "%d", &port); err != nil || port == 0 {
			return a
		}
		return fmt.Sprintf("%s%s=%s:%d", dashes, flagName, l.host, port+l.offset)
	}
	return a
}

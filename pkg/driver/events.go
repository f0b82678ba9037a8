package driver

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// Kubernetes Events on a volume's PersistentVolumeClaim when its health on
// this node changes: a Warning when one of the watched conditions
// (eventReasons) appears, a Normal event when the last of them clears.
// The node learns the health from NodeGetVolumeHealth, however it is
// called (the kubelet, a metrics scrape, or the periodic check that
// WatchHealth runs), and posts only transitions, at most one per volume
// and reason per eventInterval. It finds the claim through the
// PersistentVolume whose volume handle is the volume's (its claimRef).

// eventReasons are the health reasons that make events, with the event's
// reason.
var eventReasons = map[string]string{
	"Fenced":           "VolumeFenced",
	"DrainLagging":     "VolumeDrainLagging",
	"StoreUnavailable": "VolumeStoreUnavailable",
}

// reasonRecovered is the Normal event's reason.
const reasonRecovered = "VolumeHealthy"

// eventInterval is the least time between two events of one volume with
// the same reason.
const eventInterval = 10 * time.Minute

// healthEvents tracks each volume's watched conditions and posts events.
type healthEvents struct {
	kube      kubernetes.Interface
	node      string
	driver    string
	now       func() time.Time
	mu        sync.Mutex                     // guards active and sent
	active    map[string]map[string]struct{} // volume handle -> watched reasons active at the last observation
	sent      map[[2]string]time.Time        // (volume handle, event reason) -> when last posted
	wg        sync.WaitGroup                 // posts in flight
	postLimit time.Duration
}

func newHealthEvents(kube kubernetes.Interface, node, driver string) *healthEvents {
	return &healthEvents{kube: kube, node: node, driver: driver, now: time.Now,
		active: map[string]map[string]struct{}{}, sent: map[[2]string]time.Time{}, postLimit: 30 * time.Second}
}

// pendingEvent is one event to post.
type pendingEvent struct {
	typ, reason, msg string
}

// observe records a volume's health and posts the events its transitions
// call for, in the background.
func (e *healthEvents) observe(volume string, h *csi.VolumeHealth) {
	now := e.now()
	cur := map[string]string{} // watched reason -> message
	for _, s := range h.GetHealthStatuses() {
		if _, ok := eventReasons[s.GetReason()]; ok {
			cur[s.GetReason()] = s.GetMessage()
		}
	}
	var out []pendingEvent
	e.mu.Lock()
	prev := e.active[volume]
	for r, msg := range cur {
		if _, was := prev[r]; was {
			continue
		}
		ev := pendingEvent{corev1.EventTypeWarning, eventReasons[r], fmt.Sprintf("on node %s: %s", e.node, msg)}
		if e.allow(volume, ev.reason, now) {
			out = append(out, ev)
		}
	}
	if len(prev) > 0 && len(cur) == 0 {
		var cleared []string
		for r := range prev {
			cleared = append(cleared, r)
		}
		sort.Strings(cleared)
		ev := pendingEvent{corev1.EventTypeNormal, reasonRecovered, fmt.Sprintf("on node %s: no longer %s", e.node, strings.Join(cleared, ", "))}
		if e.allow(volume, ev.reason, now) {
			out = append(out, ev)
		}
	}
	next := map[string]struct{}{}
	for r := range cur {
		next[r] = struct{}{}
	}
	e.active[volume] = next
	e.mu.Unlock()
	if len(out) == 0 {
		return
	}
	sort.Slice(out, func(i, j int) bool { return out[i].reason < out[j].reason })
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), e.postLimit)
		defer cancel()
		for _, ev := range out {
			if err := e.post(ctx, volume, ev); err != nil {
				klog.InfoS("could not post a volume health event", "volume_id", volume, "reason", ev.reason, "err", err)
			}
		}
	}()
}

// allow reports whether an event may be posted now (and notes it). mu is
// held.
func (e *healthEvents) allow(volume, reason string, now time.Time) bool {
	k := [2]string{volume, reason}
	if t, ok := e.sent[k]; ok && now.Sub(t) < eventInterval {
		return false
	}
	e.sent[k] = now
	return true
}

// forget drops a volume (unstaged).
func (e *healthEvents) forget(volume string) {
	e.mu.Lock()
	delete(e.active, volume)
	e.mu.Unlock()
}

// wait waits for the posts in flight (tests).
func (e *healthEvents) wait() { e.wg.Wait() }

// post creates the event on the claim of the volume's PersistentVolume.
func (e *healthEvents) post(ctx context.Context, volume string, ev pendingEvent) error {
	pv, err := e.findPV(ctx, volume)
	if err != nil {
		return err
	}
	claim := pv.Spec.ClaimRef
	if claim == nil || claim.Name == "" {
		return fmt.Errorf("PersistentVolume %s has no claim", pv.Name)
	}
	now := metav1.NewTime(e.now())
	obj := &corev1.Event{
		// Named as client-go's recorder names events: object and time.
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", claim.Name, e.now().UnixNano()), Namespace: claim.Namespace},
		InvolvedObject: corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
			Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID, ResourceVersion: claim.ResourceVersion},
		Reason: ev.reason, Message: fmt.Sprintf("volume %s (%s) %s", pv.Name, volume, ev.msg), Type: ev.typ,
		Source:         corev1.EventSource{Component: "viperblock-csi-node", Host: e.node},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: e.driver + "/node", ReportingInstance: e.node,
	}
	_, err = e.kube.CoreV1().Events(claim.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	return err
}

// findPV finds the PersistentVolume of a volume handle: by name first
// (the name of a provisioned volume), else by listing.
func (e *healthEvents) findPV(ctx context.Context, volume string) (*corev1.PersistentVolume, error) {
	match := func(pv *corev1.PersistentVolume) bool {
		return pv.Spec.CSI != nil && pv.Spec.CSI.Driver == e.driver && pv.Spec.CSI.VolumeHandle == volume
	}
	if _, name, ok := strings.Cut(volume, "/"); ok {
		if pv, err := e.kube.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{}); err == nil && match(pv) {
			return pv, nil
		}
	}
	list, err := e.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range list.Items {
		if match(&list.Items[i]) {
			return &list.Items[i], nil
		}
	}
	return nil, fmt.Errorf("no PersistentVolume of driver %s has volume handle %s", e.driver, volume)
}

// WatchHealth checks every staged volume's health each interval until ctx
// ends, so that events are posted even when nothing else asks. It does
// nothing without a Kubernetes client (NodeDeps.Kube).
func (n *NodeServer) WatchHealth(ctx context.Context, interval time.Duration) {
	if n.events == nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids, _ := n.stagedVolumes()
		for _, id := range ids {
			hctx, cancel := context.WithTimeout(ctx, healthScrapeTimeout)
			n.NodeGetVolumeHealth(hctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id.String()})
			cancel()
		}
	}
}

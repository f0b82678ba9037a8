package driver

import (
	"context"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// boundPV is a PersistentVolume of this driver bound to claim app/data.
func boundPV(name, handle string) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: DefaultDriverName, VolumeHandle: handle}},
			ClaimRef:               &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "app", Name: "data", UID: "uid-1"},
		},
	}
}

func claimEvents(t *testing.T, kube *fake.Clientset) []corev1.Event {
	t.Helper()
	l, err := kube.CoreV1().Events("app").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func health(reasons ...string) *csi.VolumeHealth {
	h := &csi.VolumeHealth{}
	for _, r := range reasons {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: r, Message: "because " + r})
	}
	return h
}

// TestHealthEventsTransitions: a Warning when a watched condition appears,
// nothing while it lasts, a Normal event when it clears, at most one
// event per volume and reason per eventInterval; conditions not watched
// make none.
func TestHealthEventsTransitions(t *testing.T) {
	// The PV's name is not the volume's: it is found by listing.
	kube := fake.NewClientset(boundPV("static-pv", "default/v1"))
	e := newHealthEvents(kube, "node-1", DefaultDriverName)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	e.now = func() time.Time { return now }
	step := func(h *csi.VolumeHealth) {
		e.observe("default/v1", h)
		e.wait()
		now = now.Add(time.Minute)
	}
	reasons := func() []string {
		var out []string
		for _, ev := range claimEvents(t, kube) {
			out = append(out, ev.Type+":"+ev.Reason)
		}
		return out
	}
	step(health("NotMounted")) // not watched
	if r := reasons(); len(r) != 0 {
		t.Fatalf("events for an unwatched condition: %v", r)
	}
	step(health("Fenced"))
	step(health("Fenced")) // lasting: nothing new
	ev := claimEvents(t, kube)
	if len(ev) != 1 {
		t.Fatalf("events after fencing: %v", reasons())
	}
	if e := ev[0]; e.Type != corev1.EventTypeWarning || e.Reason != "VolumeFenced" || e.InvolvedObject.Kind != "PersistentVolumeClaim" ||
		e.InvolvedObject.Name != "data" || e.InvolvedObject.UID != "uid-1" || e.Source.Host != "node-1" || e.Message == "" {
		t.Fatalf("event %+v", e)
	}
	step(health())                             // cleared: Normal
	step(health("Fenced", "StoreUnavailable")) // Fenced again within the interval: only StoreUnavailable
	want := []string{"Warning:VolumeFenced", "Normal:VolumeHealthy", "Warning:VolumeStoreUnavailable"}
	if r := reasons(); len(r) != len(want) {
		t.Fatalf("events %v, want %v", r, want)
	}
	now = now.Add(eventInterval)
	step(health())
	step(health("Fenced"))
	if r := reasons(); len(r) != 5 || r[4] != "Warning:VolumeFenced" {
		t.Fatalf("events after the interval %v: want a second VolumeHealthy and VolumeFenced", r)
	}
}

// TestHealthEventsFromNode: a volume taken over by another owner makes
// one VolumeFenced event on its claim, however often its health is read.
func TestHealthEventsFromNode(t *testing.T) {
	r := newNodeRig(t)
	kube := fake.NewClientset(boundPV("v1", "default/v1"))
	r.ns.events = newHealthEvents(kube, "node-1", DefaultDriverName)
	r.create("v1", 64<<20)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	r.health("v1")
	r.ns.events.wait()
	if ev := claimEvents(t, kube); len(ev) != 0 {
		t.Fatalf("events for a healthy volume: %+v", ev)
	}
	other, err := vb.Open(context.Background(), r.store, "v1", vb.Options{WALDir: t.TempDir(), CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for range 3 {
		r.health("v1")
	}
	r.ns.events.wait()
	ev := claimEvents(t, kube)
	if len(ev) != 1 || ev[0].Reason != "VolumeFenced" || ev[0].InvolvedObject.Name != "data" {
		t.Fatalf("events: %+v", ev)
	}
}

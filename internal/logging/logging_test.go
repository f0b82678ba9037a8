package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

func TestJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := setup("json", &buf); err != nil {
		t.Fatal(err)
	}
	defer klog.ClearLogger()
	klog.InfoS("volume open", "volume_id", "default/v1", "size", 4096)
	klog.ErrorS(nil, "volume fenced", "volume_id", "default/v1")
	slog.Info("from the engine", "volume", "v1")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3:\n%s", len(lines), buf.String())
	}
	want := []struct{ msg, level string }{{"volume open", "INFO"}, {"volume fenced", "ERROR"}, {"from the engine", "INFO"}}
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i, err, l)
		}
		if m["msg"] != want[i].msg || m["level"] != want[i].level {
			t.Errorf("line %d: %s; want msg %q level %s", i, l, want[i].msg, want[i].level)
		}
	}
	if !strings.Contains(lines[0], `"volume_id":"default/v1"`) {
		t.Errorf("the key-value pairs are missing: %s", lines[0])
	}
}

func TestBadFormat(t *testing.T) {
	if err := Setup("yaml"); err == nil {
		t.Fatal("--logging-format=yaml accepted")
	}
}

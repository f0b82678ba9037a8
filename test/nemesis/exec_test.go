package nemesis

import (
	"context"
	"os"
	"os/exec"
	"time"
)

// runCmd runs a command with extra environment and returns its output.
func runCmd(name string, env []string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd.CombinedOutput()
}

// Command pause is the pod sandbox's process: it sleeps until SIGTERM or
// SIGINT. The e2e harness packs it as registry.k8s.io/pause so containerd
// never pulls an image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}

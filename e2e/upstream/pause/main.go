// The pod sandbox's pause process (containerd's sandbox image runs it): it holds the pod's
// namespaces, reaps orphaned children when it is PID 1 of a shared PID namespace, and exits 0 on
// SIGINT or SIGTERM. No registry is reachable on the test machines, so the sandbox image is built
// locally from this.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

//go:build unix && !linux

package redistest

import (
	"os/exec"
	"syscall"
)

// sysProcAttr puts each child in its own process group so that signals
// reach everything it forks.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// spawn starts cmd.
func spawn(cmd *exec.Cmd) error { return cmd.Start() }

package redistest

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// sysProcAttr puts each child in its own process group (so signals reach
// everything it forks) and asks the kernel to SIGKILL it if its parent dies,
// so servers do not outlive a test binary that panics or is killed by
// -timeout before its cleanups run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

type spawnRequest struct {
	cmd  *exec.Cmd
	errc chan error
}

var (
	spawnOnce sync.Once
	spawnc    chan spawnRequest
)

// spawn starts cmd from one OS thread that stays alive, locked, for the
// life of the process. Pdeathsig fires when the *thread* that forked the
// child exits, and Go may retire ordinary threads at any time, so forking
// from an arbitrary goroutine could kill a healthy server mid-test.
func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnc = make(chan spawnRequest)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread must not exit
			for req := range spawnc {
				req.errc <- req.cmd.Start()
			}
		}()
	})
	req := spawnRequest{cmd: cmd, errc: make(chan error, 1)}
	spawnc <- req
	return <-req.errc
}

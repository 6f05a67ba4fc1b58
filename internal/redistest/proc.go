package redistest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// proc is one child process running in its own process group.
type proc struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{} // closed once cmd.Wait has returned
	err    error         // cmd.Wait's result; read only after done is closed
}

// startProc starts name with args in dir, its stdout and stderr going to
// out, in a new process group. Cancelling the process (kill, terminate)
// SIGKILLs the whole group; WaitDelay bounds how long Wait waits for the
// output pipe if a forked child (BGSAVE, say) still holds it.
func startProc(dir string, out io.Writer, name string, args ...string) (*proc, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	cmd.Cancel = func() error { return killGroup(cmd, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	if err := spawn(cmd); err != nil {
		cancel()
		return nil, err
	}
	p := &proc{cmd: cmd, cancel: cancel, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		cancel()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited and been reaped.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill SIGKILLs the process group and waits for the process to exit.
func (p *proc) kill() {
	p.cancel() // runs cmd.Cancel, i.e. SIGKILL to the group, unless already exited
	<-p.done
}

// terminate SIGTERMs the process group, waits up to grace for the process to
// exit, then kills it.
func (p *proc) terminate(grace time.Duration) {
	if !p.exited() {
		_ = killGroup(p.cmd, syscall.SIGTERM)
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
		}
	}
	p.kill()
}

// killGroup sends sig to the process group led by cmd's process. A group
// that is already gone is not an error.
func killGroup(cmd *exec.Cmd, sig syscall.Signal) error {
	if cmd.Process == nil {
		return nil
	}
	err := syscall.Kill(-cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// logBuffer collects a process's output; it is safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// tail returns at most the last n bytes of the log.
func (l *logBuffer) tail(n int) string {
	s := l.String()
	if len(s) > n {
		return "[...]" + s[len(s)-n:]
	}
	return s
}

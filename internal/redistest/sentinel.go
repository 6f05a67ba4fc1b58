package redistest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sentinelTimeout bounds the wait for the sentinel to name the master.
const sentinelTimeout = 10 * time.Second

// Sentinel is a master plus one sentinel watching it under a master name.
type Sentinel struct {
	// Master is the monitored redis-server.
	Master *Server
	// MasterName is the name the sentinel knows the master by.
	MasterName string

	sentinels []*Server
}

// StartSentinel starts a master (Start) and one `redis-server --sentinel`
// process whose config file, written in t.TempDir() (the sentinel rewrites
// it), monitors the master as masterName with quorum 1, and waits (at most
// 10 s) until `SENTINEL get-master-addr-by-name masterName` answers the
// master's address and the sentinel reports its link to the master as up.
// Both processes are stopped in t.Cleanup.
func StartSentinel(t testing.TB, masterName string) *Sentinel {
	t.Helper()
	master := Start(t)
	masterPort := strconv.Itoa(master.port)

	dir := t.TempDir()
	sen := newServer(dir, func(port int) ([]string, error) {
		conf := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", port))
		text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndaemonize no\ndir %q\nsentinel monitor %s 127.0.0.1 %s 1\n",
			port, dir, masterName, masterPort)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			return nil, err
		}
		return []string{conf, "--sentinel"}, nil
	})
	sen.startFresh(t)
	s := &Sentinel{Master: master, MasterName: masterName, sentinels: []*Server{sen}}

	deadline := time.Now().Add(sentinelTimeout)
	for {
		err := sentinelReady(sen.Addr(), masterName, master.Addr())
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: sentinel %s not watching master %q at %s within %v: %v\n"+
				"---- sentinel log ----\n%s\n---- master log ----\n%s",
				sen.Addr(), masterName, master.Addr(), sentinelTimeout, err,
				sen.log.tail(logTail), master.log.tail(logTail))
		}
		time.Sleep(pollInterval)
	}
}

// sentinelReady checks that the sentinel at addr names masterAddr as the
// address of name, and that its link to the master is up (flags exactly
// "master": the sentinel answers get-master-addr-by-name from its config
// file before it has ever reached the master).
func sentinelReady(addr, name, masterAddr string) error {
	c, err := dialRESP(addr, "", time.Second)
	if err != nil {
		return err
	}
	defer c.close()
	r, err := c.do("SENTINEL", "get-master-addr-by-name", name)
	if err != nil {
		return fmt.Errorf("SENTINEL get-master-addr-by-name: %w", err)
	}
	if got := strings.Join(strs(r), ":"); got != masterAddr {
		return fmt.Errorf("SENTINEL get-master-addr-by-name %s = %q, want %q", name, got, masterAddr)
	}
	r, err = c.do("SENTINEL", "master", name)
	if err != nil {
		return fmt.Errorf("SENTINEL master: %w", err)
	}
	kv := strs(r)
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i] == "flags" && kv[i+1] != "master" {
			return fmt.Errorf("SENTINEL master %s: flags %q, want \"master\"", name, kv[i+1])
		}
	}
	return nil
}

// strs converts an array reply to strings, non-strings becoming "".
func strs(r any) []string {
	arr, _ := r.([]any)
	out := make([]string, len(arr))
	for i, v := range arr {
		out[i], _ = v.(string)
	}
	return out
}

// Addrs returns the "127.0.0.1:port" addresses of the sentinels.
func (s *Sentinel) Addrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, sen := range s.sentinels {
		addrs[i] = sen.Addr()
	}
	return addrs
}

package redistest

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterTimeout bounds `redis-cli --cluster create` plus the wait for every
// node to report a healthy cluster.
const clusterTimeout = 20 * time.Second

// Cluster is a Redis Cluster of n masters (no replicas) on loopback.
type Cluster struct {
	nodes []*Server
}

// StartCluster starts n (>= 3) redis-server processes with --cluster-enabled
// yes, --cluster-config-file <tmp>/nodes-PORT.conf and --cluster-node-timeout
// 2000 on free ports, runs `redis-cli --cluster create 127.0.0.1:p1 ...
// --cluster-replicas 0 --cluster-yes`, and waits (at most 20 s) until CLUSTER
// INFO on every node reports cluster_state:ok, all 16384 slots assigned and
// ok, and all n nodes known. It calls Require(t, "redis-server",
// "redis-cli") first and stops every node in t.Cleanup.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 3 {
		t.Fatalf("redistest: StartCluster needs at least 3 masters, got %d", n)
	}
	Require(t, "redis-server", "redis-cli")
	c := &Cluster{}
	for i := 0; i < n; i++ {
		dir := t.TempDir()
		var mu sync.Mutex
		busPorts := map[int]int{} // keep the bus port stable across restarts of one port
		s := newServer(dir, func(port int) ([]string, error) {
			mu.Lock()
			defer mu.Unlock()
			bus, ok := busPorts[port]
			if !ok {
				// The default bus port is port+10000, which may be taken or
				// above 65535 for ephemeral ports; pick a free one instead.
				for bus == 0 || bus == port {
					var err error
					if bus, err = freePort(); err != nil {
						return nil, err
					}
				}
				busPorts[port] = bus
			}
			return append(baseArgs(port, dir),
				"--cluster-enabled", "yes",
				"--cluster-port", strconv.Itoa(bus),
				"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", port)),
				"--cluster-node-timeout", "2000",
			), nil
		})
		s.startFresh(t)
		c.nodes = append(c.nodes, s)
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	cliLog := &logBuffer{}
	p, err := startProc(t.TempDir(), cliLog, "redis-cli", args...)
	if err != nil {
		t.Fatalf("redistest: starting redis-cli: %v", err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		p.kill()
	}
	if p.err != nil || ctx.Err() != nil {
		t.Fatalf("redistest: redis-cli %s: %v (context: %v)\n---- redis-cli output ----\n%s\n%s",
			strings.Join(args, " "), p.err, ctx.Err(), cliLog.tail(logTail), c.logs())
	}

	if err := c.waitHealthy(ctx); err != nil {
		t.Fatalf("redistest: cluster did not become healthy: %v\n---- redis-cli output ----\n%s\n%s",
			err, cliLog.tail(logTail), c.logs())
	}
	return c
}

// waitHealthy polls CLUSTER INFO on every node until all agree the cluster
// is complete, or ctx ends.
func (c *Cluster) waitHealthy(ctx context.Context) error {
	want := map[string]string{
		"cluster_state":          "ok",
		"cluster_slots_assigned": "16384",
		"cluster_slots_ok":       "16384",
		"cluster_known_nodes":    strconv.Itoa(len(c.nodes)),
	}
	var last error
	for {
		last = nil
		for _, s := range c.nodes {
			if err := checkClusterInfo(s.Addr(), want); err != nil {
				last = err
				break
			}
		}
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w; last: %v", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func checkClusterInfo(addr string, want map[string]string) error {
	rc, err := dialRESP(addr, "", time.Second)
	if err != nil {
		return err
	}
	defer rc.close()
	r, err := rc.do("CLUSTER", "INFO")
	if err != nil {
		return fmt.Errorf("%s: CLUSTER INFO: %w", addr, err)
	}
	info, _ := r.(string)
	for k, v := range want {
		if got := infoField(info, k); got != v {
			return fmt.Errorf("%s: %s is %q, want %q", addr, k, got, v)
		}
	}
	return nil
}

// Addrs returns the "127.0.0.1:port" addresses of the cluster's nodes.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		addrs[i] = s.Addr()
	}
	return addrs
}

// Client returns a go-redis cluster client seeded with every node address;
// it is closed in t.Cleanup.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// logs returns the tail of every node's log for failure messages.
func (c *Cluster) logs() string {
	var b strings.Builder
	for _, s := range c.nodes {
		fmt.Fprintf(&b, "---- node %s log ----\n%s\n", s.Addr(), s.log.tail(logTail/4))
	}
	return b.String()
}

package main

// The command line: usage, the listen overrides of flags and environment,
// and the hash-key subcommand. run, in main.go, parses it.

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
)

const usageText = `Usage:
  deskgate [flags]            run the gateway
  deskgate demo [flags]       also serve the example SupportDesk upstream on
                              the host:port of upstream.url (quick start)
  deskgate hash-key < key     read an API key on stdin, print its SHA-256 hex
                              (never on the command line: shell history and
                              ps would keep it)
  deskgate budget [-admin 127.0.0.1:9090] < key
                              print a key's budgets (admin GET /budget),
                              without spending any; the key on stdin too

Flags go before or after the subcommand (deskgate -config x.yaml demo).
The listen addresses are taken from -listen/-admin-listen, else from
DESKGATE_LISTEN/DESKGATE_ADMIN_LISTEN, else from the config file; they hold
across reloads.

Flags:
`

// hashKeyArgs answers `deskgate hash-key <anything>`. The argument is not
// echoed: it is likely the key.
const hashKeyArgs = `deskgate hash-key: takes no argument and no flag; it reads the key on stdin, so that the key stays out of shell history and ps:
  deskgate hash-key < key.txt
  read -rs KEY && printf '%s\n' "$KEY" | deskgate hash-key
(a key typed on a command line is in your shell history now)
`

// pick returns the value of a listen override: the flag if set, else the
// environment variable if not empty, else "" (the file's), and where it
// came from.
func pick(fs *flag.FlagSet, name, value, env string) (string, string) {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	if set {
		return value, "-" + name
	}
	if v := os.Getenv(env); v != "" {
		return v, env
	}
	return "", ""
}

// listenOverrides are the listen addresses given by flag or environment.
// They win over the file's at start-up and on every reload, since listen
// addresses never change on reload (SPEC §5): a second local replica
// needs no copied config.
type listenOverrides struct {
	server, serverFrom string // "" keeps server.listen
	admin, adminFrom   string // "" keeps admin.listen
}

// apply sets the overridden addresses in cfg; at start-up it also checks
// them, naming the flag or variable they came from.
func (o listenOverrides) apply(cfg *config.Config, check bool) error {
	if o.server != "" {
		cfg.Server.Listen = o.server
	}
	if o.admin != "" {
		cfg.Admin.Listen = o.admin
	}
	if !check {
		return nil
	}
	for _, a := range []struct{ addr, from string }{{o.server, o.serverFrom}, {o.admin, o.adminFrom}} {
		if a.addr == "" {
			continue
		}
		_, port, err := net.SplitHostPort(a.addr)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
			return fmt.Errorf("%s: want host:port or :port, got %q", a.from, a.addr)
		}
	}
	if (o.server != "" || o.admin != "") && cfg.Server.Listen == cfg.Admin.Listen {
		return fmt.Errorf("the public and admin listen addresses are both %q (%s)", cfg.Server.Listen, strings.TrimPrefix(o.serverFrom+" "+o.adminFrom, " "))
	}
	return nil
}

// hashKey reads one API key on stdin and prints its SHA-256 in hex, the
// form keys.yaml and the Redis key store hold (SPEC §3). The key never
// reaches a command line, where shell history and ps would keep it.
func hashKey(stdin io.Reader, stdout, stderr io.Writer) int {
	b, err := io.ReadAll(io.LimitReader(stdin, 4096))
	if err != nil {
		fmt.Fprintf(stderr, "deskgate hash-key: reading stdin: %v\n", err)
		return 1
	}
	key := strings.TrimSpace(string(b))
	k, ok := auth.ParseKey(key)
	if !ok {
		fmt.Fprintf(stderr, "deskgate hash-key: stdin is not an API key of the form (pk|sk)_(live|test)_<24-128 letters or digits>\n")
		return 1
	}
	fmt.Fprintln(stdout, hex.EncodeToString(k.Hash[:]))
	return 0
}

func printConfigError(w io.Writer, path string, err error) {
	var errs config.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			fmt.Fprintf(w, "%s: %s\n", path, e)
		}
		return
	}
	fmt.Fprintf(w, "%s: %v\n", path, err)
}

// Command deskgate is the edge API gateway in front of the SupportDesk REST
// API: it checks API keys against route policies, applies the global rate
// limit, proxies to the upstream and answers every error in the standard
// shape. The contract is SPEC.md; the README says how to run it.
//
// Usage:
//
//	deskgate [-config config.yaml] [-check-config] [-version] [-listen addr] [-admin-listen addr]
//	deskgate demo [flags]
//	deskgate hash-key < key
//	deskgate budget [-admin 127.0.0.1:9090] < key
//
// Flags may come before or after the subcommand. `demo` also serves the
// example SupportDesk upstream at upstream.url, in the same process, for
// the quick start. `deskgate -h` prints the whole usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/internal/filestamp"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main with its exit code returned, so that tests can call it.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "budget" {
		// budget has flags of its own (-admin) and reads no config.
		return budgetCmd(args[1:], os.Stdin, stdout, stderr)
	}
	fs := flag.NewFlagSet("deskgate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "config.yaml", "path of the YAML configuration")
	checkOnly := fs.Bool("check-config", false, "validate the configuration and exit: 0 if valid, 1 with every error on stderr")
	showVersion := fs.Bool("version", false, "print the version and exit")
	listen := fs.String("listen", "", "public listen address, instead of server.listen (env DESKGATE_LISTEN)")
	adminListen := fs.String("admin-listen", "", "admin listen address, instead of admin.listen (env DESKGATE_ADMIN_LISTEN)")
	// -h prints the usage on stdout and exits 0; a bad flag gets its error
	// and a pointer to -h on stderr, exit 2.
	fs.Usage = func() {}
	help := func() int {
		fmt.Fprint(stdout, usageText)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return 0
	}
	// Flags, then an optional subcommand, then more flags.
	parse := func(args []string) (int, bool) {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return help(), false
			}
			fmt.Fprintln(stderr, "deskgate -h for help")
			return 2, false
		}
		return 0, true
	}
	if code, ok := parse(args); !ok {
		return code
	}
	cmd := ""
	if fs.NArg() > 0 {
		cmd = fs.Arg(0)
		switch cmd {
		case "demo", "hash-key":
			if code, ok := parse(fs.Args()[1:]); !ok {
				return code
			}
		case "budget":
			return budgetCmd(fs.Args()[1:], os.Stdin, stdout, stderr)
		case "help":
			return help()
		default:
			fmt.Fprintf(stderr, "deskgate: unknown command %q (commands: demo, hash-key, budget; flags go before or after them; deskgate -h for help)\n", cmd)
			return 2
		}
	}
	if cmd == "hash-key" {
		set := 0
		fs.Visit(func(*flag.Flag) { set++ })
		if fs.NArg() > 0 || set > 0 {
			_, _ = io.WriteString(stderr, hashKeyArgs)
			return 2
		}
		return hashKey(os.Stdin, stdout, stderr)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "deskgate: unexpected argument %q (deskgate -h for help)\n", fs.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, versionLine())
		return 0
	}
	over := listenOverrides{}
	over.server, over.serverFrom = pick(fs, "listen", *listen, "DESKGATE_LISTEN")
	over.admin, over.adminFrom = pick(fs, "admin-listen", *adminListen, "DESKGATE_ADMIN_LISTEN")
	// The file's version is taken before it is read: a change that lands
	// during start-up is then seen by watch_config.
	loaded := filestamp.Of(*configPath)
	cfg, err := config.Load(*configPath)
	if err != nil {
		printConfigError(stderr, *configPath, err)
		return 1
	}
	if err := over.apply(cfg, true); err != nil {
		fmt.Fprintf(stderr, "deskgate: %v\n", err)
		return 2
	}
	if *checkOnly {
		fmt.Fprintf(stdout, "%s: configuration is valid (%d routes)\n", *configPath, len(cfg.Routes))
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cmd == "demo" {
		// `go run` neither forwards a signal sent to it nor, when it
		// dies, stops its child: the demo goes when its parent does.
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		go watchParent(ctx, os.Getppid(), time.Second, cancel)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := serve(ctx, cfg, *configPath, loaded, cmd == "demo", hup, stdout, over); err != nil {
		fmt.Fprintf(stderr, "deskgate: %v\n", err)
		return 1
	}
	return 0
}

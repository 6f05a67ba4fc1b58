package main

// `deskgate budget` and the admin listener's GET /budget (SPEC §10).

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/innovartx/deskgate/proxy"
)

// serveBudget is GET /budget: the current gateway's budgets of the key in
// X-API-Key.
func (p *process) serveBudget(w http.ResponseWriter, r *http.Request) {
	p.current.Load().ServeBudget(w, r)
}

// budgetCmd is `deskgate budget [-admin ADDR]`: it reads one API key on
// stdin (a key on the command line would stay in shell history and in
// ps), asks the admin listener's /budget and prints the answer as a table.
func budgetCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("deskgate budget", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:9090", "address of deskgate's admin listener (admin.listen)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "deskgate budget: the key is read on stdin, never from the command line (shell history, ps); e.g. deskgate budget < key.txt")
		return 2
	}
	b, err := io.ReadAll(io.LimitReader(stdin, 4096))
	if err != nil {
		fmt.Fprintf(stderr, "deskgate budget: reading stdin: %v\n", err)
		return 1
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		fmt.Fprintln(stderr, "deskgate budget: no key on stdin")
		return 1
	}
	base := *admin
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequest("GET", strings.TrimSuffix(base, "/")+"/budget", nil)
	if err != nil {
		fmt.Fprintf(stderr, "deskgate budget: -admin %q: %v\n", *admin, err)
		return 2
	}
	req.Header.Set("X-API-Key", key)
	res, err := (&http.Client{Timeout: *timeout}).Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "deskgate budget: %v\n", err)
		return 1
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		fmt.Fprintf(stderr, "deskgate budget: reading the answer: %v\n", err)
		return 1
	}
	if res.StatusCode != http.StatusOK {
		var e struct{ Code, Message string }
		if json.Unmarshal(body, &e) == nil && e.Code != "" {
			fmt.Fprintf(stderr, "deskgate budget: %d %s: %s\n", res.StatusCode, e.Code, e.Message)
		} else {
			fmt.Fprintf(stderr, "deskgate budget: %s\n", res.Status)
		}
		return 1
	}
	var rep proxy.BudgetReport
	if err := json.Unmarshal(body, &rep); err != nil {
		fmt.Fprintf(stderr, "deskgate budget: the answer is not a budget report: %v\n", err)
		return 1
	}
	printBudget(stdout, &rep)
	return 0
}

// printBudget writes rep as a table, one line per tier, then the quotas'
// table, one line per quota.
func printBudget(w io.Writer, rep *proxy.BudgetReport) {
	who := "key " + rep.KeyPrefix
	if rep.AppID != "" {
		who = "app " + rep.AppID + " (key " + rep.KeyPrefix + ")"
	}
	plan := rep.Plan
	if plan == "" {
		plan = "(default)"
	}
	fmt.Fprintf(w, "identity: %s, counted by %s\nplan: %s\n\n", who, rep.KeyBy, plan)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BUCKET\tPOLICY\tMODE\tTIER\tLIMIT\tUSED\tREMAINING\tRESET IN\tNEXT SLOT IN\tSTORE\tROUTES")
	secs := func(n int64) string {
		if n == 0 {
			return "-"
		}
		return strconv.FormatInt(n, 10) + "s"
	}
	for _, b := range rep.Buckets {
		mode := b.Mode
		if b.UpstreamRetryAfter > 0 {
			mode += fmt.Sprintf(" (upstream 429: %ds)", b.UpstreamRetryAfter)
		}
		for i, t := range b.Tiers {
			routes := ""
			if i == 0 {
				routes = strings.Join(b.Routes, ", ")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n",
				b.Bucket, b.Policy, mode, t.Name, t.Limit, t.Used, t.Remaining,
				secs(t.ResetInSeconds), secs(t.NextSlotInSeconds), b.Store, routes)
		}
	}
	_ = tw.Flush()
	if len(rep.Quotas) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "QUOTA\tMODE\tLIMIT\tUSED\tRESERVED\tREMAINING\tRESETS AT\tRESET IN\tSTORE\tMATCH")
		for _, q := range rep.Quotas {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n",
				q.Name, q.Mode, q.Limit, q.Used, q.Reserved, q.Remaining, q.ResetsAt, secs(q.ResetInSeconds), q.Store, q.Match)
		}
		_ = tw.Flush()
	}
	if rep.Note != "" {
		fmt.Fprintf(w, "\nnote: %s\n", rep.Note)
	}
}

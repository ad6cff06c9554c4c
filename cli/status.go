package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

func runStatus(args []string) error {
	var c common
	var addr string
	var asJSON bool
	fs := newFlagSet("status", "", "Show a running cluster: the scheduler, its dashboard and every worker.")
	c.register(fs)
	fs.StringVar(&addr, "scheduler", "127.0.0.1:8786", "scheduler control address")
	fs.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	if err := parse(fs, args); err != nil {
		return err
	}
	token, err := c.token()
	if err != nil {
		return err
	}
	_, clientTLS, err := c.tlsConfigs()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := wire.Dial(ctx, addr, wire.DialOptions{Role: wire.RoleAdmin, Token: token, TLS: clientTLS})
	if err != nil {
		return fmt.Errorf("cannot reach the scheduler at %s: %w", addr, err)
	}
	defer conn.Close()
	if err := conn.Send(&wire.Msg{Op: wire.OpInfo, ID: 1}); err != nil {
		return err
	}
	go func() { <-ctx.Done(); conn.Abort() }()
	m, _, err := conn.Recv()
	if err != nil {
		return fmt.Errorf("no answer from the scheduler at %s: %w", addr, err)
	}
	if m.Op == wire.OpError {
		return fmt.Errorf("scheduler: %s: %s", m.Code, m.Message)
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"scheduler": m.Scheduler, "dashboard": m.Dashboard, "workers": m.Workers})
	}
	fmt.Printf("scheduler  %s\ndashboard  %s\nworkers    %d\n\n", m.Scheduler, m.Dashboard, len(m.Workers))
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tTHREADS\tEXECUTING\tREADY\tMEMORY\tLIMIT\tSPILLED")
	for _, w := range m.Workers {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\n", w.Name, w.Address, w.NThreads, w.Executing, w.Ready,
			human(w.Memory), human(w.MemoryLimit), human(w.Spilled))
	}
	return tw.Flush()
}

func human(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

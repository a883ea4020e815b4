package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"
)

// ANSI colours. Every colour has the same length so that coloured table
// cells stay aligned.
const (
	ansiRed    = "\x1b[31m"
	ansiGreen  = "\x1b[32m"
	ansiYellow = "\x1b[33m"
	// ansiDefault is the terminal's own colour, for the plain cells of a
	// column that has coloured ones.
	ansiDefault = "\x1b[39m"
	ansiReset   = "\x1b[0m"
)

// head is a header cell of a column that may have coloured cells: wrapped
// in escapes of the same length, so that tabwriter, which counts bytes,
// keeps the header over its column.
func (a *app) head(s string) string { return a.paint(ansiDefault, s) }

func (a *app) paint(colour, s string) string {
	if !a.useColor() || s == "" {
		return s
	}
	return colour + s + ansiReset
}

// paintDecision colours an allow green and a deny red.
// Padding around d is kept and coloured with it.
func (a *app) paintDecision(d string) string {
	switch strings.ToLower(strings.TrimSpace(d)) {
	case "allow":
		return a.paint(ansiGreen, strings.ToUpper(d))
	case "deny":
		return a.paint(ansiRed, strings.ToUpper(d))
	}
	return a.paint(ansiYellow, strings.ToUpper(d))
}

func (a *app) paintBool(ok bool, yes, no string) string {
	if ok {
		return a.paint(ansiGreen, yes)
	}
	return a.paint(ansiRed, no)
}

// jsonOf renders m as JSON with proto field names and every field present,
// so that scripts see the same keys whatever the values. protojson's
// output deliberately varies its whitespace; re-indenting makes it stable.
func jsonOf(m proto.Message, indent bool) ([]byte, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	var buf bytes.Buffer
	if indent {
		err = json.Indent(&buf, raw, "", "  ")
	} else {
		err = json.Compact(&buf, raw)
	}
	if err != nil {
		return nil, fmt.Errorf("format json: %w", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// printMessage writes m as JSON or YAML per -o, or calls table.
func (a *app) printMessage(m proto.Message, table func(io.Writer) error) error {
	switch a.output {
	case "json":
		b, err := jsonOf(m, true)
		if err != nil {
			return err
		}
		_, err = a.out.Write(b)
		return err
	case "yaml":
		b, err := jsonOf(m, false)
		if err != nil {
			return err
		}
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return fmt.Errorf("format yaml: %w", err)
		}
		_, err = a.out.Write(y)
		return err
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	if err := table(tw); err != nil {
		return err
	}
	return tw.Flush()
}

// age formats a duration the way kubectl does: its two largest units.
func age(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Second:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		m, s := int(d.Minutes()), int(d.Seconds())%60
		if s == 0 {
			return fmt.Sprintf("%dm", m)
		}
		return fmt.Sprintf("%dm%ds", m, s)
	case d < 24*time.Hour:
		h, m := int(d.Hours()), int(d.Minutes())%60
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	}
	days, h := int(d.Hours())/24, int(d.Hours())%24
	if h == 0 {
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd%dh", days, h)
}

// durationCell is a proto duration as an age, "-" when unset.
func durationCell(d *durationpb.Duration) string {
	if d == nil {
		return "-"
	}
	return age(d.AsDuration())
}

// relative formats t against now: "5m ago" or "in 5m"; "-" when unset.
func (a *app) relative(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	d := t.AsTime().Sub(a.now())
	if d > 0 {
		return "in " + age(d)
	}
	return age(d) + " ago"
}

// cell is s, or "-" when empty, so that table columns never collapse.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// list joins a list for a table cell, "-" when empty.
func list(items []string) string { return cell(strings.Join(items, ",")) }

func ports(ps []uint32) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.FormatUint(uint64(p), 10)
	}
	return list(s)
}

// oneLine keeps a free-text cell on one line of a table.
func oneLine(s string) string {
	return cell(strings.Join(strings.Fields(s), " "))
}

package identity

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseAcceleration(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Acceleration
		wantErr bool
	}{
		{in: "true", want: AccelerationOn},
		{in: "false", want: AccelerationOff},
		{in: "", wantErr: true},
		{in: "True", wantErr: true},
		{in: "yes", wantErr: true},
		{in: "1", wantErr: true},
	} {
		got, err := ParseAcceleration(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseAcceleration(%q): got %v, %v; want %v, error %t", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestAccelerationOf(t *testing.T) {
	yes, no := true, false
	got := []Acceleration{AccelerationOf(nil), AccelerationOf(&yes), AccelerationOf(&no)}
	want := []Acceleration{AccelerationDefault, AccelerationOn, AccelerationOff}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("AccelerationOf(nil, true, false) (-want +got):\n%s", diff)
	}
}

func TestAccelerationEnabled(t *testing.T) {
	type row struct {
		Choice      string
		NodeDefault bool
		Enabled     bool
	}
	var got []row
	for _, a := range []Acceleration{AccelerationDefault, AccelerationOn, AccelerationOff} {
		for _, node := range []bool{false, true} {
			got = append(got, row{a.String(), node, a.Enabled(node)})
		}
	}
	want := []row{
		{"default", false, false},
		{"default", true, true},
		{"on", false, true},
		{"on", true, true},
		{"off", false, false},
		{"off", true, false},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Enabled (-want +got):\n%s", diff)
	}
}

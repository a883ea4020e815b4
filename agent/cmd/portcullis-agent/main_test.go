package main

import "testing"

func TestSoftMemoryLimit(t *testing.T) {
	for _, tt := range []struct {
		name      string
		env       map[string]string
		wantSoft  int64
		wantOK    bool
		wantError bool
	}{
		{name: "unset", env: map[string]string{}},
		{name: "container limit", env: map[string]string{memoryLimitEnv: "536870912"}, wantSoft: 483183819, wantOK: true},
		{name: "GOMEMLIMIT wins", env: map[string]string{memoryLimitEnv: "536870912", "GOMEMLIMIT": "400MiB"}},
		{name: "not a number", env: map[string]string{memoryLimitEnv: "512Mi"}, wantError: true},
		{name: "zero", env: map[string]string{memoryLimitEnv: "0"}, wantError: true},
		{name: "negative", env: map[string]string{memoryLimitEnv: "-1"}, wantError: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			soft, ok, err := softMemoryLimit(func(k string) string { return tt.env[k] })
			if (err != nil) != tt.wantError {
				t.Fatalf("error: got %v, want error %v", err, tt.wantError)
			}
			if soft != tt.wantSoft || ok != tt.wantOK {
				t.Errorf("got %d, %v; want %d, %v", soft, ok, tt.wantSoft, tt.wantOK)
			}
		})
	}
}

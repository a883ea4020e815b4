package testenv

import (
	"os"
	"testing"
)

// RequirePrivilegedEnv is the environment variable that turns a skipped
// privileged test into a failure. CI sets it so that a lost capability can
// never silently turn the kernel tests off.
const RequirePrivilegedEnv = "PORTCULLIS_REQUIRE_PRIVILEGED"

// RequirePrivileged skips t when the process is not root, or fails it when
// PORTCULLIS_REQUIRE_PRIVILEGED=1 is set.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv(RequirePrivilegedEnv) == "1" {
		tb.Fatalf("test needs root, and %s=1 forbids skipping it", RequirePrivilegedEnv)
	}
	tb.Skip("test needs root (run as root, e.g. sudo make test)")
}

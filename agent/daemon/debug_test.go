package daemon

import "testing"

func TestFailingMessage(t *testing.T) {
	for _, tc := range []struct {
		keys        []string
		notCaptured int
		want        string
	}{
		{[]string{"shop/a"}, 0, "1 workload failing to enrol: shop/a (portcullis workloads says why)"},
		{[]string{"shop/a", "shop/b"}, 1, "2 workloads failing to enrol, 1 not captured: shop/a, shop/b (portcullis workloads says why)"},
		{[]string{"a/1", "a/2", "a/3", "a/4", "a/5", "a/6", "a/7"}, 0,
			"7 workloads failing to enrol: a/1, a/2, a/3, a/4, a/5 and 2 more (portcullis workloads says why)"},
	} {
		if got := failingMessage(tc.keys, tc.notCaptured); got != tc.want {
			t.Errorf("failingMessage(%q, %d):\ngot  %q\nwant %q", tc.keys, tc.notCaptured, got, tc.want)
		}
	}
}

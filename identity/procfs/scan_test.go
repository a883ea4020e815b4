package procfs

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	uidA = "0b6d1e5a-65d0-44d7-a663-855d0b6f0c50"
	uidB = "11111111-2222-4333-8444-555555555555"
	uidC = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
	uidD = "deadbeef-0000-4000-8000-000000000001"
	uidE = "cafef00d-1234-4567-89ab-cdef01234567"
)

func TestParsePodCgroup(t *testing.T) {
	tests := []struct {
		path string
		want PodCgroup
		ok   bool
	}{
		{
			path: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b6d1e5a_65d0_44d7_a663_855d0b6f0c50.slice/cri-containerd-abc.scope",
			want: PodCgroup{UID: uidA, Driver: DriverSystemd, QoS: QoSBurstable,
				PodPath:   "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b6d1e5a_65d0_44d7_a663_855d0b6f0c50.slice",
				Container: "cri-containerd-abc.scope"},
			ok: true,
		},
		{
			path: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0B6D1E5A_65D0_44D7_A663_855D0B6F0C50.slice",
			want: PodCgroup{UID: uidA, Driver: DriverSystemd, QoS: QoSBestEffort,
				PodPath: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0B6D1E5A_65D0_44D7_A663_855D0B6F0C50.slice"},
			ok: true,
		},
		{
			path: "/kubepods.slice/kubepods-pod0b6d1e5a_65d0_44d7_a663_855d0b6f0c50.slice/crio-1.scope",
			want: PodCgroup{UID: uidA, Driver: DriverSystemd, QoS: QoSGuaranteed,
				PodPath: "/kubepods.slice/kubepods-pod0b6d1e5a_65d0_44d7_a663_855d0b6f0c50.slice", Container: "crio-1.scope"},
			ok: true,
		},
		{
			path: "/kubepods/burstable/pod0b6d1e5a-65d0-44d7-a663-855d0b6f0c50/0123",
			want: PodCgroup{UID: uidA, Driver: DriverCgroupfs, QoS: QoSBurstable,
				PodPath: "/kubepods/burstable/pod0b6d1e5a-65d0-44d7-a663-855d0b6f0c50", Container: "0123"},
			ok: true,
		},
		{
			path: "/docker/abc/kubepods/pod0b6d1e5a-65d0-44d7-a663-855d0b6f0c50/0123",
			want: PodCgroup{UID: uidA, Driver: DriverCgroupfs, QoS: QoSGuaranteed,
				PodPath: "/docker/abc/kubepods/pod0b6d1e5a-65d0-44d7-a663-855d0b6f0c50", Container: "0123"},
			ok: true,
		},
		{
			path: "/../../kubepods-besteffort-podcafef00d_1234_4567_89ab_cdef01234567.slice/cri-containerd-x.scope",
			want: PodCgroup{UID: uidE, Driver: DriverSystemd, QoS: QoSBestEffort,
				PodPath: "/../../kubepods-besteffort-podcafef00d_1234_4567_89ab_cdef01234567.slice", Container: "cri-containerd-x.scope"},
			ok: true,
		},
		// Not pods.
		{path: "/"},
		{path: "/init.scope"},
		{path: "/user.slice/user-0.slice/podman-1.scope"},
		{path: "/kubepods/burstable/podnotauuid/x"},
		{path: "/system.slice/pod0b6d1e5a-65d0-44d7-a663-855d0b6f0c50"},        // no kubepods parent
		{path: "/kubepods/guaranteed/pod0b6d1e5a-65d0-44d7-a663-855d0b6f0c50"}, // no such QoS directory
		{path: "/kubepods.slice/kubepods-burstable.slice"},
		{path: "/kubepods.slice/kubepods-burstable-pod0b6d1e5a-65d0-44d7-a663-855d0b6f0c5.slice"},
		{path: "/kubepods.slice/kubepods-burstable-pod0b6d1e5a_65d0_44d7_a663_855d0b6f0c5g.slice"},
	}
	for _, tt := range tests {
		got, ok := ParsePodCgroup(tt.path)
		if ok != tt.ok {
			t.Errorf("ParsePodCgroup(%q): got ok %v, want %v", tt.path, ok, tt.ok)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ParsePodCgroup(%q) mismatch (-want +got):\n%s", tt.path, diff)
		}
	}
}

func TestSystemdSliceNameRoundTrip(t *testing.T) {
	for _, q := range []QoS{QoSGuaranteed, QoSBurstable, QoSBestEffort} {
		name := SystemdSliceName(uidA, q)
		got, ok := ParsePodCgroup("/kubepods.slice/" + name)
		if !ok || got.UID != uidA || got.QoS != q {
			t.Errorf("ParsePodCgroup(SystemdSliceName(%s)) = %+v, %v; want UID %s QoS %s", q, got, ok, uidA, q)
		}
	}
}

func TestParseCgroupFile(t *testing.T) {
	in := "12:memory:/kubepods/x\n1:name=systemd:/a\n3:cpu,cpuacct:/b\n0::/c\nbogus\nx::/d\n4:memory:relative\n"
	want := []CgroupLine{
		{Hierarchy: 12, Controllers: []string{"memory"}, Path: "/kubepods/x"},
		{Hierarchy: 1, Controllers: []string{"name=systemd"}, Path: "/a"},
		{Hierarchy: 3, Controllers: []string{"cpu", "cpuacct"}, Path: "/b"},
		{Hierarchy: 0, Path: "/c"},
	}
	if diff := cmp.Diff(want, ParseCgroupFile([]byte(in))); diff != "" {
		t.Errorf("ParseCgroupFile mismatch (-want +got):\n%s", diff)
	}
}

func TestParseStartTime(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		err  bool
	}{
		{in: "42 (sleep) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 100", want: 12345},
		{in: "42 (a) (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 777 1000 100", want: 777},
		{in: "42 (sleep) S 1 2", err: true},
		{in: "42 sleep S", err: true},
		{in: "42 (sleep) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 x 1000", err: true},
	}
	for _, tt := range tests {
		got, err := parseStartTime([]byte(tt.in))
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("parseStartTime(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestScanFakeProc(t *testing.T) {
	proc, err := filepath.Abs("testdata/proc")
	if err != nil {
		t.Fatal(err)
	}
	cgroot, err := filepath.Abs("testdata/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewScanner(Config{ProcRoot: proc, CgroupRoot: cgroot})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	netns := func(pid string) string { return filepath.Join(proc, pid, "ns", "net") }
	podA := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b6d1e5a_65d0_44d7_a663_855d0b6f0c50.slice"
	podB := "/kubepods/besteffort/pod" + uidB
	podC := "/kubelet.slice/kubelet-kubepods.slice/kubepods-podaaaaaaaa_bbbb_4ccc_8ddd_eeeeeeeeeeee.slice"
	podE := "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podcafef00d_1234_4567_89ab_cdef01234567.slice"
	want := map[string]*Pod{
		// The process named pause is the sandbox even though nginx is older.
		uidA: {UID: uidA, Driver: DriverSystemd, QoS: QoSBurstable, Cgroup: podA, CgroupPath: cgroot + podA,
			SandboxPID: 100, SandboxStartTime: 1000, NetnsPath: netns("100"), PIDs: []int{100, 150, 151}},
		// No pause: the oldest process is the sandbox.
		uidB: {UID: uidB, Driver: DriverCgroupfs, QoS: QoSBestEffort, Cgroup: podB, CgroupPath: cgroot + podB,
			SandboxPID: 201, SandboxStartTime: 3000, NetnsPath: netns("201"), PIDs: []int{200, 201}},
		uidC: {UID: uidC, Driver: DriverSystemd, QoS: QoSGuaranteed, Cgroup: podC, CgroupPath: cgroot + podC,
			SandboxPID: 300, SandboxStartTime: 7000, NetnsPath: netns("300"), PIDs: []int{300}},
		// v1 only: no v2 cgroup to attach to, the v1 path for information.
		uidD: {UID: uidD, Driver: DriverCgroupfs, QoS: QoSBurstable, CgroupV1: "/kubepods/burstable/pod" + uidD,
			SandboxPID: 400, SandboxStartTime: 8000, NetnsPath: netns("400"), PIDs: []int{400}},
		// Seen from another cgroup namespace: found by name under the root.
		uidE: {UID: uidE, Driver: DriverSystemd, QoS: QoSBestEffort, Cgroup: podE, CgroupPath: cgroot + podE,
			SandboxPID: 500, SandboxStartTime: 9000, NetnsPath: netns("500"), PIDs: []int{500}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Scan mismatch (-want +got):\n%s", diff)
	}

	one, err := s.Find(uidB)
	if err != nil {
		t.Fatalf("Find(%s): %v", uidB, err)
	}
	if diff := cmp.Diff(want[uidB], one); diff != "" {
		t.Errorf("Find(%s) mismatch (-want +got):\n%s", uidB, diff)
	}
	// Upper-case input is the same UID.
	if _, err := s.Find("0B6D1E5A-65D0-44D7-A663-855D0B6F0C50"); err != nil {
		t.Errorf("Find upper-case UID: %v", err)
	}
	if _, err := s.Find("99999999-2222-4333-8444-555555555555"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Find(absent): got %v, want ErrNotFound", err)
	}
	if _, err := s.Find("not-a-uid"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Find(not-a-uid): got %v, want a validation error", err)
	}
}

func TestCgroupRootFromMountinfo(t *testing.T) {
	s, err := NewScanner(Config{ProcRoot: "testdata/proc"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.CgroupRoot(), "/sys/fs/cgroup/unified"; got != want {
		t.Errorf("CgroupRoot: got %q, want %q", got, want)
	}
	if got, want := unescapeMount(`/mnt/with\040space`), "/mnt/with space"; got != want {
		t.Errorf("unescapeMount: got %q, want %q", got, want)
	}
}

func FuzzParsePodCgroup(f *testing.F) {
	f.Add("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b6d1e5a_65d0_44d7_a663_855d0b6f0c50.slice/cri-containerd-abc.scope")
	f.Add("/kubepods/burstable/pod0b6d1e5a-65d0-44d7-a663-855d0b6f0c50/0123")
	f.Add("0::/../x")
	f.Fuzz(func(t *testing.T, path string) {
		pc, ok := ParsePodCgroup(path)
		if !ok {
			return
		}
		if _, valid := canonicalUID(pc.UID); !valid {
			t.Errorf("ParsePodCgroup(%q) returned UID %q, not a canonical UID", path, pc.UID)
		}
		again, ok := ParsePodCgroup(pc.PodPath)
		if !ok || again.UID != pc.UID {
			t.Errorf("ParsePodCgroup(PodPath %q) = %+v, %v; want UID %s", pc.PodPath, again, ok, pc.UID)
		}
		ParseCgroupFile([]byte(path))
	})
}

// BenchmarkScanHost scans this machine's /proc: the cost of one pass,
// which identity/kube shares between the lookups of a burst.
func BenchmarkScanHost(b *testing.B) {
	s, err := NewScanner(Config{})
	if err != nil {
		b.Fatal(err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		b.Fatal(err)
	}
	procs := 0
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			procs++
		}
	}
	for b.Loop() {
		if _, err := s.Scan(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(procs), "processes")
}

package kubeenv_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/identity/procfs"
	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// metric scrapes one unlabelled series from an agent's /metrics.
func (a *agentProc) metric(c *http.Client, name string) (float64, error) {
	resp, err := c.Get("http://" + a.admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /metrics of %s", name, a.node)
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// nodePod is a pod as a container runtime would lay it out on the node: a
// named network namespace with a veth, and a sandbox process named pause in
// a kubelet-style cgroup named after the API-assigned pod UID.
type nodePod struct {
	netns    string
	hostVeth string
	cgroup   string // the sandbox container's cgroup
	sandbox  *exec.Cmd
}

// startNodePod lays out a pod with address ip; hostIP is the address of the
// host side of its veth, or "bridge:<name>" to enslave it to a bridge.
func startNodePod(t *testing.T, uid, ip, hostIP string) *nodePod {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	sfx := hex.EncodeToString(b[:])
	hostVeth, podVeth := "pckh"+sfx, "pckp"+sfx
	np := &nodePod{netns: "pcke-" + sfx, hostVeth: hostVeth}
	run(t, "ip", "netns", "add", np.netns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", np.netns).Run() })
	run(t, "ip", "link", "add", hostVeth, "type", "veth", "peer", "name", podVeth)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostVeth).Run() })
	run(t, "ip", "link", "set", podVeth, "netns", np.netns)
	if bridge, ok := strings.CutPrefix(hostIP, "bridge:"); ok {
		run(t, "ip", "link", "set", hostVeth, "master", bridge)
	} else {
		run(t, "ip", "addr", "add", hostIP+"/24", "dev", hostVeth)
	}
	run(t, "ip", "link", "set", hostVeth, "up")
	run(t, "ip", "-n", np.netns, "addr", "add", ip+"/24", "dev", podVeth)
	run(t, "ip", "-n", np.netns, "link", "set", podVeth, "up")
	run(t, "ip", "-n", np.netns, "link", "set", "lo", "up")

	sc, err := procfs.NewScanner(procfs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	root := sc.CgroupRoot()
	parent := filepath.Join(root, "portcullis-kubeenv-"+sfx)
	podDir := filepath.Join(parent, "kubepods.slice", "kubepods-besteffort.slice", procfs.SystemdSliceName(uid, procfs.QoSBestEffort))
	sbDir := filepath.Join(podDir, "cri-containerd-sandbox.scope")
	if err := os.MkdirAll(sbDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for d := sbDir; d != root; d = filepath.Dir(d) {
			_ = os.Remove(d)
		}
	})
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	pause := filepath.Join(t.TempDir(), "pause")
	if err := os.Symlink(sleep, pause); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(sbDir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	// ip netns exec enters the namespace and execs pause: same process, in
	// the sandbox cgroup from its clone on.
	np.cgroup = sbDir
	np.sandbox = exec.Command("ip", "netns", "exec", np.netns, pause, "1000")
	np.sandbox.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := np.sandbox.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before the cgroup and netns cleanups above
		_ = np.sandbox.Process.Kill()
		_ = np.sandbox.Wait()
	})
	return np
}

// TestAgentEnrolsPodFromAPI runs the agent in Kubernetes mode as node-1: a
// Pod created through the API in an enforced namespace, whose sandbox runs
// on this node, is enrolled; deleted through the API, it is unenrolled and
// the agent's pin directory is back to what it was.
func TestAgentEnrolsPodFromAPI(t *testing.T) {
	testenv.RequirePrivileged(t)
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	env := kubeenv.Start(t, kubeenv.Options{
		CRDDir: filepath.Join(root, "daemonset", "crds"),
		Users:  map[string][]string{agentUser: {"system:serviceaccounts", "system:serviceaccounts:portcullis"}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, f := range []string{"namespace.yaml", "rbac.yaml"} {
		if _, err := env.Kubectl(ctx, "apply", "--server-side", "-f", filepath.Join(root, "daemonset", "manifests", f)); err != nil {
			t.Fatal(err)
		}
	}
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop",
		Labels: map[string]string{identity.EnforceLabel: identity.EnforceEnabled}}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	agents := startAgents(t, env, 1)
	a := agents[0]
	hc := &http.Client{Timeout: 2 * time.Second}
	waitMetric := func(name string, want float64) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			v, err := a.metric(hc, name)
			if err == nil && v == want {
				return
			}
			if time.Now().After(deadline) || a.cmd.ProcessState != nil {
				t.Fatalf("%s: got %v (%v), want %v", name, v, err, want)
			}
			time.Sleep(50 * time.Millisecond) // the agent's state is observable by scraping only
		}
	}
	waitMetric("portcullis_agent_enrolled_pods", 0)
	pinDir := fmt.Sprintf("/sys/fs/bpf/portcullis-kubeenv-%d-1", os.Getpid())
	before := listTree(t, pinDir)

	pod, err := kubeenv.RunningPod(ctx, cs, kubeenv.Pod{
		Namespace: "shop", Name: "orders-api", Node: a.node, ServiceAccount: "orders",
		Labels: map[string]string{"app": "orders-api"}, IPs: []string{"10.78.0.2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	np := startNodePod(t, string(pod.UID), "10.78.0.2", "10.78.0.1")
	waitMetric("portcullis_agent_enrolled_pods", 1)

	// An app in the pod answers 200 to anyone who reaches it.
	app := exec.Command("ip", "netns", "exec", np.netns, "/usr/bin/python3", "-m", "http.server", "--bind", "10.78.0.2", "8080")
	app.Dir = t.TempDir()
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Process.Kill(); _ = app.Wait() })
	// gate reports how a request from the host fares: the status code, or
	// 0 when the connection is refused, dropped or reset.
	gate := func() int {
		c := &http.Client{Timeout: 500 * time.Millisecond}
		resp, err := c.Get("http://10.78.0.2:8080/")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Enrolled in an enforced namespace with no policy: default deny. The
	// app may take a moment to listen; the verifier answers regardless.
	if got := gate(); got == http.StatusOK {
		t.Fatalf("request to the enrolled pod: got 200 from the app, want a refusal")
	} else {
		t.Logf("enrolled: %d", got)
	}

	// The agent crashes: the pinned datapath keeps the gate closed until a
	// new agent re-syncs from the API and adopts the pod again.
	_ = a.cmd.Process.Kill()
	_ = a.cmd.Wait()
	for range 5 {
		if got := gate(); got == http.StatusOK {
			t.Fatalf("request while the agent is down: got 200 from the app, want nothing through")
		} else {
			t.Logf("agent down: %d", got)
		}
	}
	a.restart(t)
	waitMetric("portcullis_agent_enrolled_pods", 1)
	if got := gate(); got == http.StatusOK {
		t.Fatalf("request after the agent restarted: got 200 from the app, want a refusal")
	} else {
		t.Logf("agent restarted: %d", got)
	}

	if err := kubeenv.DeletePodNow(ctx, cs, "shop", "orders-api"); err != nil {
		t.Fatal(err)
	}
	waitMetric("portcullis_agent_enrolled_pods", 0)
	// Unenrolled, the pod is no longer captured: the app itself answers,
	// which also shows the refusals above were the gate, not a dead app.
	deadline0 := time.Now().Add(15 * time.Second)
	for got := gate(); got != http.StatusOK; got = gate() {
		if time.Now().After(deadline0) {
			t.Fatalf("request after unenrolment: got %d, want 200 from the app", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Nothing of the pod is left pinned.
	deadline := time.Now().Add(10 * time.Second)
	for after := listTree(t, pinDir); after != before; after = listTree(t, pinDir) {
		if time.Now().After(deadline) {
			t.Fatalf("pin directory after unenrolment:\n%s\nwant as before the pod:\n%s", after, before)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listTree lists the files under dir, one per line.
func listTree(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, rel)
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Join(out, "\n")
}

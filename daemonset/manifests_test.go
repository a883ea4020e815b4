package daemonset

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/portcullis-mesh/portcullis/agent/config"
	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// objects is a decoded manifest set, keyed by "Kind/namespace/name".
type objects map[string]runtime.Object

// newObject returns the typed object for a manifest's apiVersion and kind;
// anything else is an error, so no manifest escapes strict decoding.
func newObject(apiVersion, kind string) (runtime.Object, error) {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, nil
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "apps/v1 DaemonSet":
		return &appsv1.DaemonSet{}, nil
	case "rbac.authorization.k8s.io/v1 ClusterRole":
		return &rbacv1.ClusterRole{}, nil
	case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}, nil
	case "apiextensions.k8s.io/v1 CustomResourceDefinition":
		return &apiextensionsv1.CustomResourceDefinition{}, nil
	}
	return nil, fmt.Errorf("unexpected object %s %s", apiVersion, kind)
}

// decodeStrict decodes a multi-document YAML stream; unknown or duplicate
// fields are errors.
func decodeStrict(data []byte, into objects) error {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read yaml document: %w", err)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return fmt.Errorf("decode type: %w", err)
		}
		if tm.Kind == "" && len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue // empty document
		}
		obj, err := newObject(tm.APIVersion, tm.Kind)
		if err != nil {
			return fmt.Errorf("%w in document:\n%.300s", err, doc)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return fmt.Errorf("decode %s strictly: %w", tm.Kind, err)
		}
		m, err := metaOf(obj)
		if err != nil {
			return err
		}
		key := tm.Kind + "/" + m.GetNamespace() + "/" + m.GetName()
		if _, dup := into[key]; dup {
			return fmt.Errorf("duplicate object %s", key)
		}
		into[key] = obj
	}
}

// stripComments drops comment lines and document separators: what is left
// of an empty document is nothing.
func stripComments(doc []byte) []byte {
	var out [][]byte
	for l := range bytes.SplitSeq(doc, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' && string(t) != "---" {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func metaOf(obj runtime.Object) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

func decodeFiles(t *testing.T, pattern string) objects {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("glob %s: %v (%d files)", pattern, err, len(files))
	}
	objs := objects{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := decodeStrict(data, objs); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	return objs
}

func get[T runtime.Object](t *testing.T, objs objects, key string) T {
	t.Helper()
	o, ok := objs[key]
	if !ok {
		t.Fatalf("no %s among %v", key, keys(objs))
	}
	v, ok := o.(T)
	if !ok {
		t.Fatalf("%s is %T", key, o)
	}
	return v
}

func keys(objs objects) []string {
	out := make([]string, 0, len(objs))
	for k := range objs {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// wantCaps are the capabilities the agent needs, and no more; the README
// says why each.
var wantCaps = []corev1.Capability{"BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}

// checkDaemonSet asserts the security-relevant shape of the agent.
func checkDaemonSet(t *testing.T, objs objects) {
	t.Helper()
	ds := get[*appsv1.DaemonSet](t, objs, "DaemonSet/portcullis/portcullis-agent")
	spec := ds.Spec.Template.Spec
	if !spec.HostPID {
		t.Errorf("hostPID: got false, want true (the agent scans /proc for pods)")
	}
	if spec.HostNetwork {
		t.Errorf("hostNetwork: got true, want false")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("containers: got %d, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatalf("agent container has no securityContext.capabilities")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Errorf("privileged: got %v, want explicitly false", sc.Privileged)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation: got %v, want false", sc.AllowPrivilegeEscalation)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("readOnlyRootFilesystem: got %v, want true", sc.ReadOnlyRootFilesystem)
	}
	if diff := cmp.Diff([]corev1.Capability{"ALL"}, sc.Capabilities.Drop); diff != "" {
		t.Errorf("capabilities.drop (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantCaps, sc.Capabilities.Add, cmpopts.SortSlices(func(a, b corev1.Capability) bool { return a < b })); diff != "" {
		t.Errorf("capabilities.add (-want +got):\n%s", diff)
	}

	// The Go runtime follows the container's limits (the agent reads
	// PORTCULLIS_MEMORY_LIMIT; GOMEMLIMIT would leave no room for its BPF
	// maps).
	limitEnv := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil {
			limitEnv[e.Name] = e.ValueFrom.ResourceFieldRef.Resource
		}
	}
	if diff := cmp.Diff(map[string]string{"GOMAXPROCS": "limits.cpu", "PORTCULLIS_MEMORY_LIMIT": "limits.memory"}, limitEnv); diff != "" {
		t.Errorf("env from resource limits (-want +got):\n%s", diff)
	}

	hostPaths := map[string]string{} // host path → mount path
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.HostPath.Path] = mounts[v.Name]
		}
	}
	// Exactly these: the node's /proc is the container's through hostPID,
	// and every other host path would be privilege nothing uses.
	gotPaths := slices.Sorted(maps.Keys(hostPaths))
	if want := []string{"/sys/fs/bpf", "/sys/fs/cgroup", "/var/run/portcullis"}; !slices.Equal(gotPaths, want) {
		t.Errorf("host paths mounted: got %v, want %v", gotPaths, want)
	}

	var nodeName bool
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Errorf("NODE_NAME is not set from the downward API's spec.nodeName")
	}

	var adminPort int32
	for _, p := range c.Ports {
		if p.Name == "admin" {
			adminPort = p.ContainerPort
		}
	}
	if adminPort != 9901 {
		t.Errorf("admin port: got %d, want 9901", adminPort)
	}
	// The startup probe waits for readiness, so that liveness (which
	// restarts) starts only once the first sync is done.
	for _, p := range []struct {
		name, path string
		probe      *corev1.Probe
	}{
		{"liveness", "/healthz", c.LivenessProbe},
		{"readiness", "/readyz", c.ReadinessProbe},
		{"startup", "/readyz", c.StartupProbe},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Port.String() != "admin" || p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s probe: got %+v, want httpGet %s on the admin port", p.name, p.probe, p.path)
		}
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("no %s request", r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			t.Errorf("no %s limit", r)
		}
	}
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.String() != "1" {
		t.Errorf("updateStrategy: got %+v, want RollingUpdate with maxUnavailable 1", ds.Spec.UpdateStrategy)
	}

	// The kubelet must give the agent at least its drain time.
	cfg := agentConfig(t, objs)
	grace := spec.TerminationGracePeriodSeconds
	if grace == nil || time.Duration(*grace)*time.Second < cfg.ShutdownGrace.Duration+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v leaves under 5s beyond shutdownGrace %s", grace, cfg.ShutdownGrace)
	}
	if !strings.HasSuffix(cfg.AdminAddress, fmt.Sprintf(":%d", adminPort)) || strings.HasPrefix(cfg.AdminAddress, "127.") {
		t.Errorf("adminAddress %q: the kubelet probes port %d on the pod IP", cfg.AdminAddress, adminPort)
	}
}

// agentConfig loads the ConfigMap's agent.yaml with the agent's own strict
// loader.
func agentConfig(t *testing.T, objs objects) *config.Config {
	t.Helper()
	cm := get[*corev1.ConfigMap](t, objs, "ConfigMap/portcullis/portcullis-agent")
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte(cm.Data["agent.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("ConfigMap agent.yaml: %v", err)
	}
	if cfg.Mode != config.ModeKubernetes {
		t.Errorf("ConfigMap mode: got %q, want kubernetes", cfg.Mode)
	}
	return cfg
}

// wantRules is the agent's whole authority.
var wantRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"pods", "serviceaccounts", "namespaces"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"portcullis.dev"}, Resources: []string{"issuers", "clusterissuers", "accesspolicies"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
}

func checkRBAC(t *testing.T, objs objects) {
	t.Helper()
	role := get[*rbacv1.ClusterRole](t, objs, "ClusterRole//portcullis-agent")
	for i, r := range role.Rules {
		for _, s := range slices.Concat(r.APIGroups, r.Resources, r.Verbs, r.ResourceNames, r.NonResourceURLs) {
			if strings.Contains(s, "*") {
				t.Errorf("rule %d has a wildcard %q", i, s)
			}
		}
	}
	if diff := cmp.Diff(wantRules, role.Rules); diff != "" {
		t.Errorf("ClusterRole rules (-want +got):\n%s", diff)
	}
	b := get[*rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding//portcullis-agent")
	wantSubj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: "portcullis-agent", Namespace: "portcullis"}}
	if diff := cmp.Diff(wantSubj, b.Subjects); diff != "" {
		t.Errorf("ClusterRoleBinding subjects (-want +got):\n%s", diff)
	}
	if b.RoleRef.Name != role.Name || b.RoleRef.Kind != "ClusterRole" {
		t.Errorf("ClusterRoleBinding roleRef: got %+v, want ClusterRole %s", b.RoleRef, role.Name)
	}
	get[*corev1.ServiceAccount](t, objs, "ServiceAccount/portcullis/portcullis-agent")
}

// TestManifests decodes every plain manifest file (no binaries needed).
func TestManifests(t *testing.T) {
	objs := decodeFiles(t, "manifests/*.yaml")
	for k, v := range decodeFiles(t, "crds/*.yaml") {
		objs[k] = v
	}
	checkDaemonSet(t, objs)
	checkRBAC(t, objs)
	ns := get[*corev1.Namespace](t, objs, "Namespace//portcullis")
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("namespace pod-security enforce label: got %q, want privileged", got)
	}
}

// TestChartCRDsInSync checks the chart ships exactly the generated CRDs
// (helm/portcullis/crds is a symbolic link to daemonset/crds; a copy would
// drift on the next `make generate`).
func TestChartCRDsInSync(t *testing.T) {
	gen, err := filepath.Glob("crds/*.yaml")
	if err != nil || len(gen) == 0 {
		t.Fatalf("glob crds: %v", err)
	}
	chart, _ := filepath.Glob("helm/portcullis/crds/*.yaml")
	if len(chart) != len(gen) {
		t.Errorf("chart has %d CRD files, daemonset/crds has %d: restore the symbolic link helm/portcullis/crds -> ../../crds", len(chart), len(gen))
	}
	for _, f := range gen {
		want, _ := os.ReadFile(f)
		got, err := os.ReadFile(filepath.Join("helm/portcullis/crds", filepath.Base(f)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("helm/portcullis/crds/%s differs from %s (err %v): restore the symbolic link helm/portcullis/crds -> ../../crds", filepath.Base(f), f, err)
		}
	}
}

func run(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// kustomizeBuild renders the kustomize base with kubectl's kustomize.
func kustomizeBuild(t *testing.T, kubectl string) []byte {
	return run(t, nil, kubectl, "kustomize", ".")
}

// helmTemplate renders the chart as `helm install -n portcullis` would.
func helmTemplate(t *testing.T) []byte {
	t.Helper()
	helm := kubeenv.HelmPath()
	if helm == "" {
		if os.Getenv(kubeenv.RequireEnv) == "1" {
			t.Fatalf("helm not in %s; %s=1 forbids skipping", kubeenv.BinDir(), kubeenv.RequireEnv)
		}
		t.Skipf("helm not in %s (run test/kubeenv/build.sh)", kubeenv.BinDir())
	}
	return run(t, nil, helm, "template", "portcullis", "helm/portcullis", "--namespace", "portcullis", "--include-crds")
}

// buildKustomize renders the kustomize base and decodes it strictly.
func buildKustomize(t *testing.T) objects {
	t.Helper()
	bins := kubeenv.RequireBinaries(t)
	kust := objects{}
	if err := decodeStrict(kustomizeBuild(t, bins["kubectl"]), kust); err != nil {
		t.Fatalf("kustomize output: %v", err)
	}
	return kust
}

// TestKustomize checks what `kubectl apply -k daemonset/` applies.
func TestKustomize(t *testing.T) {
	kust := buildKustomize(t)
	checkDaemonSet(t, kust)
	checkRBAC(t, kust)
	for _, crd := range []string{"issuers", "clusterissuers", "accesspolicies"} {
		get[*apiextensionsv1.CustomResourceDefinition](t, kust, "CustomResourceDefinition//"+crd+".portcullis.dev")
	}
}

// TestChart renders the chart, decodes it strictly and checks it renders
// the same objects as the kustomize base.
func TestChart(t *testing.T) {
	kust := buildKustomize(t)

	chart := objects{}
	if err := decodeStrict(helmTemplate(t), chart); err != nil {
		t.Fatalf("helm template output: %v", err)
	}
	checkDaemonSet(t, chart)
	checkRBAC(t, chart)

	// Same objects, except the namespace, which helm leaves to
	// `kubectl create namespace` (or createNamespace=true).
	delete(kust, "Namespace//portcullis")
	if diff := cmp.Diff(keys(kust), keys(chart)); diff != "" {
		t.Fatalf("objects (-kustomize +helm):\n%s", diff)
	}
	ignore := cmp.Options{
		cmpopts.IgnoreFields(metav1.ObjectMeta{}, "Labels", "Annotations"),
		cmpopts.EquateEmpty(),
	}
	for k, want := range kust {
		got := chart[k]
		if cm, ok := want.(*corev1.ConfigMap); ok {
			// Compare the configuration, not its comments and layout.
			var a, b map[string]any
			if err := yaml.Unmarshal([]byte(cm.Data["agent.yaml"]), &a); err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal([]byte(got.(*corev1.ConfigMap).Data["agent.yaml"]), &b); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(a, b); diff != "" {
				t.Errorf("%s agent.yaml (-kustomize +helm):\n%s", k, diff)
			}
			continue
		}
		if diff := cmp.Diff(want, got, ignore); diff != "" {
			t.Errorf("%s (-kustomize +helm):\n%s", k, diff)
		}
	}
}

// TestApplyToAPIServer applies both packagings to a real API server: first
// a server-side dry run (admission, schema and CRD validation included),
// then for real, and checks the agent's service account can do what its
// informers need and nothing it must not.
func TestApplyToAPIServer(t *testing.T) {
	const agentUser = "system:serviceaccount:portcullis:portcullis-agent"
	env := kubeenv.Start(t, kubeenv.Options{
		Users: map[string][]string{agentUser: {"system:serviceaccounts", "system:serviceaccounts:portcullis"}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kubectl := func(stdin []byte, args ...string) []byte {
		t.Helper()
		cmd := exec.CommandContext(ctx, filepath.Join(kubeenv.BinDir(), "kubectl"), append([]string{"--kubeconfig=" + env.Kubeconfig}, args...)...)
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	// Namespaced objects cannot be dry-run into a namespace that does not
	// exist, so the namespace is created for real first.
	kubectl(nil, "apply", "--server-side", "-f", "manifests/namespace.yaml")
	kubectl(nil, "apply", "--server-side", "--dry-run=server", "-k", ".")
	if helm := kubeenv.HelmPath(); helm != "" {
		kubectl(helmTemplate(t), "apply", "--server-side", "--dry-run=server", "-f", "-")
	}
	kubectl(nil, "apply", "--server-side", "-k", ".")
	kubectl(nil, "wait", "--for=condition=Established", "--timeout=60s", "crd/issuers.portcullis.dev", "crd/clusterissuers.portcullis.dev", "crd/accesspolicies.portcullis.dev")

	// The agent's identity, as RBAC sees it.
	agent := kubernetes.NewForConfigOrDie(env.UserConfig(agentUser))
	if _, err := agent.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"}); err != nil {
		t.Errorf("agent lists pods: %v", err)
	}
	if _, err := agent.CoreV1().ServiceAccounts("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("agent lists service accounts: %v", err)
	}
	if _, err := agent.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("agent lists namespaces: %v", err)
	}
	for _, res := range []string{"issuers", "clusterissuers", "accesspolicies"} {
		if err := agent.CoreV1().RESTClient().Get().AbsPath("/apis/portcullis.dev/v1alpha1", res).Do(ctx).Error(); err != nil {
			t.Errorf("agent lists %s: %v", res, err)
		}
	}
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: "probe", Namespace: "default"},
		InvolvedObject: corev1.ObjectReference{Kind: "AccessPolicy", Namespace: "default", Name: "x"},
		Reason:         "Probe", Message: "rbac test", Type: corev1.EventTypeWarning,
	}
	if _, err := agent.CoreV1().Events("default").Create(ctx, ev, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Errorf("agent creates events: %v", err)
	}
	// And nothing else.
	if _, err := agent.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("agent lists secrets: got %v, want Forbidden", err)
	}
	if err := agent.CoreV1().Pods("default").Delete(ctx, "x", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("agent deletes pods: got %v, want Forbidden", err)
	}
	if _, err := agent.CoreV1().ConfigMaps("portcullis").Get(ctx, "portcullis-agent", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("agent reads config maps: got %v, want Forbidden", err)
	}
}

// TestHelmInstall installs the chart into a real API server as the README
// says (namespace created beforehand), checks the objects, then uninstalls.
func TestHelmInstall(t *testing.T) {
	env := kubeenv.Start(t, kubeenv.Options{})
	helm := kubeenv.HelmPath()
	if helm == "" {
		if os.Getenv(kubeenv.RequireEnv) == "1" {
			t.Fatalf("helm not in %s; %s=1 forbids skipping", kubeenv.BinDir(), kubeenv.RequireEnv)
		}
		t.Skipf("helm not in %s (run test/kubeenv/build.sh)", kubeenv.BinDir())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := env.Kubectl(ctx, "create", "namespace", "portcullis"); err != nil {
		t.Fatal(err)
	}
	helmRun := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, helm, append(args, "--kubeconfig", env.Kubeconfig)...)
		// Helm keeps caches and its registry config under HOME.
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	helmRun("install", "portcullis", "helm/portcullis", "--namespace", "portcullis")

	cs := kubernetes.NewForConfigOrDie(env.Config())
	ds, err := cs.AppsV1().DaemonSets("portcullis").Get(ctx, "portcullis-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get DaemonSet after helm install: %v", err)
	}
	if got := ds.Labels["app.kubernetes.io/managed-by"]; got != "Helm" {
		t.Errorf("DaemonSet managed-by label: got %q, want Helm", got)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, "portcullis-agent", metav1.GetOptions{}); err != nil {
		t.Errorf("get ClusterRole: %v", err)
	}
	out, err := env.Kubectl(ctx, "get", "crd", "accesspolicies.portcullis.dev", "-o", "name")
	if err != nil || !strings.Contains(string(out), "accesspolicies.portcullis.dev") {
		t.Errorf("CRDs from the chart's crds/: %v %s", err, out)
	}

	helmRun("uninstall", "portcullis", "--namespace", "portcullis")
	if _, err := cs.AppsV1().DaemonSets("portcullis").Get(ctx, "portcullis-agent", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("DaemonSet after helm uninstall: got %v, want NotFound", err)
	}
}

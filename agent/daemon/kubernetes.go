package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/portcullis-mesh/portcullis/agent/kubepolicy"
	"github.com/portcullis-mesh/portcullis/identity/kube"
	"github.com/portcullis-mesh/portcullis/identity/kube/coreclient"
	"github.com/portcullis-mesh/portcullis/identity/kube/policywatch"
	"github.com/portcullis-mesh/portcullis/identity/procfs"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// startKubernetes follows the node's Pods (and the cluster's pod addresses,
// ServiceAccounts and Namespaces) and the portcullis.dev objects. It returns
// once the first complete policy set is in force and every workload that
// existed at start has been reported.
func (a *Agent) startKubernetes(ctx context.Context) error {
	rc, err := restConfig(a.cfg.Kubernetes.Kubeconfig)
	if err != nil {
		return err
	}
	rc.UserAgent = "portcullis-agent/" + Version
	// The core/v1 client alone: client-go's full clientset would link
	// every API group's clients and types.
	client, err := coreclient.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes dynamic client: %w", err)
	}

	// Events on refused policy objects, rate-limited per object so a
	// fleet of agents cannot flood the API server.
	reporter, err := policywatch.NewReporter(client, policywatch.ReporterConfig{NodeName: a.cfg.NodeName})
	if err != nil {
		return fmt.Errorf("event reporter: %w", err)
	}
	go func() { <-ctx.Done(); reporter.Shutdown() }()

	propagation := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "portcullis", Subsystem: "policy", Name: "propagation_seconds",
		Help:    "Time from the agent's watch observing a change of a policy object to the new set being enforced on this node.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	if err := a.metrics.Registry().Register(propagation); err != nil {
		return fmt.Errorf("register propagation metric: %w", err)
	}
	pw, err := policywatch.New(dyn, policywatch.Config{})
	if err != nil {
		return fmt.Errorf("policy watcher: %w", err)
	}
	policiesSynced := make(chan struct{})
	perr := make(chan error, 1)
	go func() {
		perr <- kubepolicy.Run(ctx, pw, kubepolicy.Config{
			Store:    a.store,
			Reporter: reporter,
			Logger:   a.log.With("component", "policy"),
			// Namespaced Issuers may be limited to their issuer URL.
			RestrictNamespacedIssuers: a.cfg.Kubernetes.RestrictNamespacedIssuers,
			OnApply: func(set *policy.Set, observedAt time.Time) {
				a.applySet(set)
				propagation.Observe(time.Since(observedAt).Seconds())
			},
			OnResult: func(r kubepolicy.Result) {
				a.policyErr.Store(&r.Err)
				if r.Applied {
					a.policyInvalid.Store(int64(r.Invalid))
				}
			},
		}, func() { close(policiesSynced) })
	}()
	select {
	case <-policiesSynced:
	case err := <-perr:
		if err == nil {
			err = errors.New("policy watcher ended before its first sync")
		}
		return fmt.Errorf("policies: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}

	agentPod := ""
	if a.cfg.Kubernetes.PodName != "" {
		agentPod = a.cfg.Kubernetes.PodNamespace + "/" + a.cfg.Kubernetes.PodName
	}
	// Pods' cgroups are found under the same cgroupRoot as the datapath's.
	locator, err := procfs.NewScanner(procfs.Config{CgroupRoot: a.cfg.CgroupRoot})
	if err != nil {
		return fmt.Errorf("workload source: %w", err)
	}
	src, err := kube.New(client, kube.Config{
		NodeName:    a.cfg.NodeName,
		TrustDomain: a.cfg.TrustDomain,
		AgentPod:    agentPod,
		IPCache:     a.ipc,
		Locator:     locator,
		Logger:      a.log.With("component", "workloads"),
	})
	if err != nil {
		return fmt.Errorf("workload source: %w", err)
	}
	return a.followWorkloads(ctx, src.Run)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config (set kubernetes.kubeconfig outside a pod): %w", err)
	}
	return c, nil
}

package kubeenv

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Pod describes a pod to create as if a scheduler had bound it and a kubelet
// had started it.
type Pod struct {
	Namespace, Name string
	// Node is spec.nodeName. Required: there is no scheduler.
	Node string
	// ServiceAccount is spec.serviceAccountName; empty means "default".
	ServiceAccount string
	Labels         map[string]string
	// IPs become status.podIPs (the first also status.podIP). Nil leaves
	// the pod without addresses.
	IPs         []string
	HostNetwork bool
}

// RunningPod creates p and sets its status to Running with its addresses,
// as a kubelet would (the API server ignores status on create). The
// returned pod carries the UID the API server assigned: name the pod's
// cgroup after it.
func RunningPod(ctx context.Context, client kubernetes.Interface, p Pod) (*corev1.Pod, error) {
	created, err := client.CoreV1().Pods(p.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels},
		Spec: corev1.PodSpec{
			NodeName:           p.Node,
			ServiceAccountName: p.ServiceAccount,
			HostNetwork:        p.HostNetwork,
			Containers:         []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	created.Status.Phase = corev1.PodRunning
	for i, ip := range p.IPs {
		if i == 0 {
			created.Status.PodIP = ip
		}
		created.Status.PodIPs = append(created.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	updated, err := client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("set status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return updated, nil
}

// DeletePodNow deletes a pod with a grace period of 0: without a kubelet to
// confirm termination, a graceful delete would leave the pod terminating
// forever.
func DeletePodNow(ctx context.Context, client kubernetes.Interface, namespace, name string) error {
	zero := int64(0)
	if err := client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

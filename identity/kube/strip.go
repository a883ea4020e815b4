package kube

import (
	"github.com/portcullis-mesh/portcullis/identity"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The informer transforms below keep only what the source reads, so that an
// agent watching every pod of a large cluster holds a few hundred bytes per
// pod rather than the full object (managed fields, annotations, container
// specs, statuses). They run before objects are stored; anything else (a
// tombstone) passes through unchanged.

// stripLocalPod keeps what a pod on this node needs: identity, labels,
// the local acceleration annotation, placement, addresses and lifecycle.
func stripLocalPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	var ann map[string]string
	if v, ok := p.Annotations[identity.LocalAccelerationAnnotation]; ok {
		ann = map[string]string{identity.LocalAccelerationAnnotation: v}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:              p.Name,
			Namespace:         p.Namespace,
			UID:               p.UID,
			ResourceVersion:   p.ResourceVersion,
			Labels:            p.Labels,
			Annotations:       ann,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName:           p.Spec.NodeName,
			HostNetwork:        p.Spec.HostNetwork,
			ServiceAccountName: p.Spec.ServiceAccountName,
		},
		Status: corev1.PodStatus{
			Phase:  p.Status.Phase,
			PodIPs: p.Status.PodIPs,
		},
	}, nil
}

// stripClusterPod keeps what the IP cache needs of any pod in the cluster.
func stripClusterPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            p.Name,
			Namespace:       p.Namespace,
			UID:             p.UID,
			ResourceVersion: p.ResourceVersion,
		},
		Spec: corev1.PodSpec{
			HostNetwork:        p.Spec.HostNetwork,
			ServiceAccountName: p.Spec.ServiceAccountName,
		},
		Status: corev1.PodStatus{
			Phase:  p.Status.Phase,
			PodIPs: p.Status.PodIPs,
		},
	}, nil
}

// stripServiceAccount keeps the Workload ID client-ID annotation only.
func stripServiceAccount(obj any) (any, error) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return obj, nil
	}
	out := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name:            sa.Name,
		Namespace:       sa.Namespace,
		ResourceVersion: sa.ResourceVersion,
	}}
	if id, ok := sa.Annotations[identity.ClientIDAnnotation]; ok {
		out.Annotations = map[string]string{identity.ClientIDAnnotation: id}
	}
	return out, nil
}

// stripNamespace keeps the labels only.
func stripNamespace(obj any) (any, error) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:            ns.Name,
		ResourceVersion: ns.ResourceVersion,
		Labels:          ns.Labels,
	}}, nil
}

package kube

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/portcullis-mesh/portcullis/identity"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestAcceleration(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ann     map[string]string
		want    identity.Acceleration
		wantErr bool
	}{
		{name: "no annotations", want: identity.AccelerationDefault},
		{name: "other annotations", ann: map[string]string{"a": "true"}, want: identity.AccelerationDefault},
		{name: "true", ann: map[string]string{identity.LocalAccelerationAnnotation: "true"}, want: identity.AccelerationOn},
		{name: "false", ann: map[string]string{identity.LocalAccelerationAnnotation: "false"}, want: identity.AccelerationOff},
		{name: "empty", ann: map[string]string{identity.LocalAccelerationAnnotation: ""}, want: identity.AccelerationDefault, wantErr: true},
		{name: "invalid", ann: map[string]string{identity.LocalAccelerationAnnotation: "yes"}, want: identity.AccelerationDefault, wantErr: true},
	} {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: tc.ann}}
		got, err := acceleration(p)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("%s: got %v, %v; want %v, error %t", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestStripLocalPodKeepsAcceleration: the transform keeps the acceleration
// annotation, and only it.
func TestStripLocalPodKeepsAcceleration(t *testing.T) {
	for _, tc := range []struct {
		name string
		ann  map[string]string
		want map[string]string
	}{
		{name: "none", ann: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
		{
			name: "set",
			ann:  map[string]string{identity.LocalAccelerationAnnotation: "false", "other": "x"},
			want: map[string]string{identity.LocalAccelerationAnnotation: "false"},
		},
	} {
		out, err := stripLocalPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Annotations: tc.ann}})
		if err != nil {
			t.Fatalf("%s: stripLocalPod: %v", tc.name, err)
		}
		if diff := cmp.Diff(tc.want, out.(*corev1.Pod).Annotations); diff != "" {
			t.Errorf("%s: annotations kept (-want +got):\n%s", tc.name, diff)
		}
	}
}

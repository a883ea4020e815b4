//go:build tools

// Package tools pins the main packages built by ../build.sh so that go.mod
// and go.sum record their dependencies.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)

package v1alpha1

//go:generate go tool controller-gen object:headerFile=boilerplate.go.txt paths=.
//go:generate go tool controller-gen crd:crdVersions=v1,maxDescLen=400 paths=. output:crd:artifacts:config=../../../../daemonset/crds

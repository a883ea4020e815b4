#!/usr/bin/env bash
# build.sh builds the Kubernetes control plane used by the test/kubeenv tests
# (kube-apiserver, kubectl, etcd, and helm when it builds) from the Go module
# proxy through the separate module in ./tools, into a cache directory outside
# the repository. It is a no-op when the binaries are already present.
#
#   PORTCULLIS_KUBE_BIN  output directory
#                        (default /var/cache/portcullis/kube-v1.37.1/bin)
#
# A cold build takes 12-17 minutes on 2 cores and about 3.5 GB of module and
# build caches; a warm one takes seconds.
set -euo pipefail

KUBE_VERSION=v1.37.1
HELM_MODULE=helm.sh/helm/v4
HELM_VERSION=${PORTCULLIS_HELM_VERSION:-v4.3.1}
BIN=${PORTCULLIS_KUBE_BIN:-/var/cache/portcullis/kube-${KUBE_VERSION}/bin}
here=$(cd "$(dirname "$0")" && pwd)

have_all=1
for b in kube-apiserver kubectl etcd; do
	[[ -x "$BIN/$b" ]] || have_all=0
done
if [[ $have_all == 1 && ( -x "$BIN/helm" || -e "$BIN/.helm-unavailable-$HELM_VERSION" ) ]]; then
	exit 0
fi

mkdir -p "$BIN"
tmp=$(mktemp -d "$BIN/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=37 -X $pkg.gitTreeState=clean"

if [[ $have_all == 0 ]]; then
	echo "build.sh: building kube-apiserver, kubectl, etcd ($KUBE_VERSION) into $BIN" >&2
	(
		cd "$here/tools"
		CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
			k8s.io/kubernetes/cmd/kube-apiserver \
			k8s.io/kubernetes/cmd/kubectl \
			./cmd/etcd
	)
	for b in kube-apiserver kubectl etcd; do
		mv -f "$tmp/$b" "$BIN/$b"
	done
fi

if [[ ! -x "$BIN/helm" ]]; then
	echo "build.sh: building helm ($HELM_MODULE $HELM_VERSION) into $BIN" >&2
	if (
		cd "$tmp"
		CGO_ENABLED=0 GOBIN="$tmp" nice -n 10 go install -trimpath -ldflags "-s -w" \
			"$HELM_MODULE/cmd/helm@$HELM_VERSION"
	); then
		mv -f "$tmp/helm" "$BIN/helm"
	else
		# The chart tests fall back to rendering with the Helm library.
		echo "build.sh: helm did not build; chart tests use the library renderer" >&2
		touch "$BIN/.helm-unavailable-$HELM_VERSION"
	fi
fi
echo "build.sh: binaries in $BIN" >&2

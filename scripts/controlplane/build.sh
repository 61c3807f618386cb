#!/usr/bin/env bash
# Builds the test control plane (issue 15) from Go modules, once per set of version pins, into
#   ${FLUID_AIRFLOW_CACHE:-$HOME/.cache/fluid-airflow}/controlplane/<key>/
# with its own Go caches (<key>/go/mod = GOMODCACHE, <key>/go/build = GOCACHE), so nothing in the checkout or in
# the user's default Go caches is touched. Layout of <key>/:
#   bin/      etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm ddc-helm(->helm)
#             dataset-controller vineyardruntime-controller
#   charts/   Fluid's vineyard chart with its `library` dependency laid in (module zips drop the symlink)
#   crds/     Fluid's CRDs of the pinned release (charts/fluid/fluid/crds)
#   kwok/     kwok's own stage manifests of the pinned release (kustomize/stage)
#   VERSION   the pins + Go version, written last: its presence means "complete"
#   timings.tsv  seconds per piece of the build that made it
# Usage: build.sh [--print-dir] [piece ...]   pieces: etcd fluid kube-apiserver kwok kube-controller-manager
#        kube-scheduler helm (default: all). A piece already built is skipped, so a warm run takes seconds.
set -euo pipefail

K8S_VERSION=v1.36.3     # k8s.io/kubernetes
ETCD_VERSION=v3.6.17    # go.etcd.io/etcd/server/v3 (Kubernetes >= 1.35 needs etcd >= 3.5.13)
KWOK_VERSION=v0.8.0     # sigs.k8s.io/kwok
HELM_VERSION=v3.19.5    # helm.sh/helm/v3 (Fluid calls it as ddc-helm)
FLUID_VERSION=v1.0.8    # github.com/fluid-cloudnative/fluid
RECIPE=1                # bump when this script changes what it produces
GO_MIN=1.26             # k8s.io/kubernetes v1.36 and sigs.k8s.io/kwok v0.8.0 declare `go 1.26.0`

KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_fluid-${FLUID_VERSION}_r${RECIPE}"
ROOT="${FLUID_AIRFLOW_CACHE:-$HOME/.cache/fluid-airflow}/controlplane/${KEY}"
ALL_PIECES=(etcd fluid kube-apiserver kwok kube-controller-manager kube-scheduler helm)

if [[ "${1:-}" == "--print-dir" ]]; then echo "$ROOT"; exit 0; fi
if [[ -f "$ROOT/VERSION" && $# -eq 0 ]]; then echo "control plane up to date: $ROOT"; exit 0; fi

check_go() {
  if ! command -v go >/dev/null 2>&1; then
    echo "error: Go is not on PATH. The test control plane is built from Go modules and needs Go >= $GO_MIN" \
         "(install Go and put its bin/ on PATH), then run: make controlplane" >&2
    exit 2
  fi
  local have; have=$(GOTOOLCHAIN=local go env GOVERSION)   # e.g. go1.26.8
  local v=${have#go}; local maj=${v%%.*}; local rest=${v#*.}; local min=${rest%%[.a-z]*}
  if (( maj < ${GO_MIN%%.*} || (maj == ${GO_MIN%%.*} && min < ${GO_MIN#*.}) )); then
    echo "error: $(command -v go) is $have; the control plane pins need Go >= $GO_MIN" \
         "(k8s.io/kubernetes $K8S_VERSION and sigs.k8s.io/kwok $KWOK_VERSION say 'go 1.26.0'). Install a newer Go." >&2
    exit 2
  fi
  GO_VERSION=$have
}
check_go

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false -trimpath"
export GOMODCACHE="$ROOT/go/mod" GOCACHE="$ROOT/go/build" GOPATH="$ROOT/go/path"
mkdir -p "$ROOT/bin" "$ROOT/src" "$GOMODCACHE" "$GOCACHE"
# One build at a time per key (CI and a test session may both ask); the second waits, then finds it done.
exec 9>"$ROOT/.lock"
flock 9
if [[ -f "$ROOT/VERSION" && $# -eq 0 ]]; then echo "control plane up to date: $ROOT"; exit 0; fi
BIN="$ROOT/bin"
GOB=(nice -n 19 go build -ldflags)

# Empty wrapper module in src/<name>; building there (never inside a module's own zip dir) avoids the
# `-mod=vendor` trap of zips that keep vendor/modules.txt but drop the vendored packages.
wrapper() {
  local dir="$ROOT/src/$1"; rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
  go mod init "local/$1" >/dev/null 2>&1
}

modfile_dir() { go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'; }
modfile_gomod() { go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'; }

build_etcd() {
  # server/v3's `=> ../api` replaces are ignored in a dependency; its requires already name $ETCD_VERSION.
  wrapper etcd
  go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  "${GOB[@]}" "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
}

k8s_module() {
  # k8s.io/kubernetes requires its staging modules at v0.0.0 with `=> ./staging/...` replaces; pin each
  # replace to the matching published v0.<minor>.<patch> so the module builds as a dependency.
  [[ -f "$ROOT/src/k8s/go.mod" ]] && { cd "$ROOT/src/k8s"; return; }
  wrapper k8s
  local gm sv="v0.${K8S_VERSION#v1.}"
  gm=$(modfile_gomod "k8s.io/kubernetes@$K8S_VERSION")
  local args=()
  for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gm"); do
    args+=("-replace=$m=$m@$sv")
  done
  go mod edit "${args[@]}"
  grep '^godebug' "$gm" >> go.mod || true
  local c=k8s.io/kubernetes/cmd
  go get -tool "$c/kube-apiserver@$K8S_VERSION" "$c/kube-controller-manager@$K8S_VERSION" \
    "$c/kube-scheduler@$K8S_VERSION"
}

k8s_ldflags() {
  local v=${K8S_VERSION#v} ld="-s -w"; local minor; minor=$(echo "$v" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$ld"
}

build_k8s_cmd() { k8s_module; "${GOB[@]}" "$(k8s_ldflags)" -o "$BIN/$1" "k8s.io/kubernetes/cmd/$1"; }

build_kwok() {
  wrapper kwok
  go get -tool "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  "${GOB[@]}" "-s -w" -o "$BIN/kwok" sigs.k8s.io/kwok/cmd/kwok
  local src; src=$(modfile_dir "sigs.k8s.io/kwok@$KWOK_VERSION")
  rm -rf "$ROOT/kwok"; mkdir -p "$ROOT/kwok"; cp -r "$src/kustomize/stage" "$ROOT/kwok/stage"; chmod -R u+w "$ROOT/kwok"
}

build_helm() {
  wrapper helm
  go get -tool "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  "${GOB[@]}" "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$BIN/helm" helm.sh/helm/v3/cmd/helm
  ln -sfn helm "$BIN/ddc-helm"
}

build_fluid() {
  # Fluid's go.mod pins k8s.io/* by replace directives, which `go install mod@v` refuses: copy them into a wrapper.
  wrapper fluid
  local src; src=$(modfile_dir "github.com/fluid-cloudnative/fluid@$FLUID_VERSION")
  local args=()
  while read -r rep; do args+=("-replace=$rep"); done < <(go mod edit -json "$src/go.mod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    old, new = r["Old"], r["New"]
    lhs = old["Path"] + ("@" + old["Version"] if old.get("Version") else "")
    print(lhs + "=" + new["Path"] + ("@" + new["Version"] if new.get("Version") else ""))')
  go mod edit "${args[@]}"
  local f=github.com/fluid-cloudnative/fluid/cmd
  go get -tool "$f/dataset@$FLUID_VERSION" "$f/vineyard@$FLUID_VERSION"
  local ld="-s -w -X github.com/fluid-cloudnative/fluid.version=$FLUID_VERSION"
  "${GOB[@]}" "$ld" -o "$BIN/dataset-controller" "$f/dataset"
  "${GOB[@]}" "$ld" -o "$BIN/vineyardruntime-controller" "$f/vineyard"
  rm -rf "$ROOT/charts" "$ROOT/crds"; mkdir -p "$ROOT/charts" "$ROOT/crds"
  cp -r "$src/charts/vineyard" "$src/charts/library" "$ROOT/charts/"
  chmod -R u+w "$ROOT/charts"
  mkdir -p "$ROOT/charts/vineyard/charts"; cp -r "$ROOT/charts/library" "$ROOT/charts/vineyard/charts/library"
  cp "$src"/charts/fluid/fluid/crds/*.yaml "$ROOT/crds/"; chmod u+w "$ROOT"/crds/*
}

piece_done() {
  case $1 in
    fluid) [[ -x "$BIN/dataset-controller" && -x "$BIN/vineyardruntime-controller" && -d "$ROOT/charts" ]] ;;
    helm) [[ -x "$BIN/helm" && -L "$BIN/ddc-helm" ]] ;;
    kwok) [[ -x "$BIN/kwok" && -d "$ROOT/kwok/stage" ]] ;;
    *) [[ -x "$BIN/$1" ]] ;;
  esac
}

run_piece() {
  local p=$1 t0; t0=$(date +%s)
  if piece_done "$p"; then echo "== $p: cached"; return; fi
  echo "== $p: building (nice -n 19) ..."
  case $p in
    etcd) build_etcd ;; fluid) build_fluid ;; kwok) build_kwok ;; helm) build_helm ;;
    kube-apiserver | kube-controller-manager | kube-scheduler) build_k8s_cmd "$p" ;;
    *) echo "error: unknown piece '$p' (known: ${ALL_PIECES[*]})" >&2; exit 2 ;;
  esac
  local dt=$(( $(date +%s) - t0 ))
  printf '%s\t%s\t%s\n' "$p" "$dt" "$(date -u +%FT%TZ)" >> "$ROOT/timings.tsv"
  echo "== $p: built in ${dt}s"
}

pieces=("$@"); (( ${#pieces[@]} )) || pieces=("${ALL_PIECES[@]}")
for p in "${pieces[@]}"; do run_piece "$p"; done

for p in "${ALL_PIECES[@]}"; do piece_done "$p" || exit 0; done
{
  echo "key=$KEY"; echo "go=$GO_VERSION"
  echo "kubernetes=$K8S_VERSION"; echo "etcd=$ETCD_VERSION"; echo "kwok=$KWOK_VERSION"
  echo "helm=$HELM_VERSION"; echo "fluid=$FLUID_VERSION"; echo "built=$(date -u +%FT%TZ)"
} > "$ROOT/VERSION.tmp"
mv "$ROOT/VERSION.tmp" "$ROOT/VERSION"
echo "control plane built: $ROOT"
du -sh "$ROOT/bin" "$ROOT/go/mod" "$ROOT/go/build" "$ROOT" 2>/dev/null || true

# The node: a real kubelet running pods with containerd, runc and the CNI bridge plugin,
# kube-scheduler placing them, and a local OCI registry (go-containerregistry's) serving
# the images `make images` builds under the names the chart gives them.
# shellcheck shell=bash

NODE_NAME=sluice-node
NODE_DIR=$STATE/node
# The pods' network: a bridge whose address is the node's, and what the pods route to.
NODE_BRIDGE=sluice0
NODE_IP=10.88.0.1
POD_SUBNET=10.88.0.0/16
# Every pod runs on this node; tests that must name it select it by this label.
NODE_LABEL=sluice.dev/node=kubelet
# The sandbox image containerd asks for; the registry serves e2e/node/pause.c's build.
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1

node_bin() { echo "$CACHE/$1/bin"; }

# The bridge with the node's address, before anything listens on it.
node_network() {
    apt_install iproute2 iptables
    ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || ip link add "$NODE_BRIDGE" type bridge
    ip -4 addr show dev "$NODE_BRIDGE" | grep -q "inet $NODE_IP/" ||
        ip addr add "$NODE_IP/16" dev "$NODE_BRIDGE"
    ip link set "$NODE_BRIDGE" up
    set_env NODE_IP "$NODE_IP"
}

registry_up() {
    local port
    port=$(port_for registry)
    if ! running registry || ! port_in_use "$port"; then
        stop registry
        say "starting the image registry on 127.0.0.1:$port"
        start registry "$BIN/registry" -port "$port"
        wait_until registry 30 port_in_use "$port" || die "the registry did not start"
    fi
    set_env REGISTRY "127.0.0.1:$port"
    # The registry keeps images in memory: the sandbox image goes in at every start.
    if ! "$BIN/crane" manifest "127.0.0.1:$port/${PAUSE_IMAGE#*/}" >/dev/null 2>&1; then
        local root
        root=$(mktemp -d)
        mkdir -p "$root/rootfs"
        cp "$BIN/pause" "$root/rootfs/pause"
        python3 "$E2E_DIR/images/layer.py" "$root/rootfs" "$root/pause.tar"
        "$BIN/crane" append --oci-empty-base -f "$root/pause.tar" \
            -t "127.0.0.1:$port/${PAUSE_IMAGE#*/}" >/dev/null 2>>"$LOGS/registry.log"
        "$BIN/crane" mutate "127.0.0.1:$port/${PAUSE_IMAGE#*/}" --entrypoint /pause \
            --user 65535:65535 -t "127.0.0.1:$port/${PAUSE_IMAGE#*/}" >/dev/null 2>>"$LOGS/registry.log"
        rm -rf "$root"
    fi
}

# containerd's hosts files: the registries the chart and containerd name are served by
# the local registry (plain HTTP on loopback).
registry_mirrors() {
    local port=$1 host
    for host in registry.k8s.io ghcr.io; do
        mkdir -p "$NODE_DIR/certs.d/$host"
        cat >"$NODE_DIR/certs.d/$host/hosts.toml" <<EOF
server = "https://$host"

[host."http://127.0.0.1:$port"]
  capabilities = ["pull", "resolve"]
EOF
    done
}

containerd_up() {
    local sock=$NODE_DIR/containerd/containerd.sock
    if running containerd && [ -S "$sock" ]; then
        say "containerd already running"
        return 0
    fi
    stop containerd
    mkdir -p "$NODE_DIR/containerd" "$NODE_DIR/cni"
    registry_mirrors "$(port_for registry)"
    cat >"$NODE_DIR/cni/10-sluice.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "sluice", "plugins": [
  {"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
            "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
    # restrict_oom_score_adj: this machine's root lacks CAP_SYS_RESOURCE, so no process may
    # lower its OOM score below containerd's (the kubelet asks -998 for sandboxes and
    # -997 for Guaranteed pods; runc's write of those fails with EACCES). With it,
    # containerd clamps them to its own score.
    cat >"$NODE_DIR/containerd/config.toml" <<EOF
version = 3
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
[grpc]
  address = "$sock"
[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$PAUSE_IMAGE"
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = "$NODE_DIR/certs.d"
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$(node_bin "runc-$RUNC_VERSION")/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$(node_bin "cni-plugins-$CNI_PLUGINS_VERSION")"]
      conf_dir = "$NODE_DIR/cni"
EOF
    say "starting containerd $CONTAINERD_VERSION"
    start containerd env "PATH=$(node_bin "containerd-$CONTAINERD_VERSION"):$(node_bin "runc-$RUNC_VERSION"):$PATH" \
        "$BIN/containerd" --config "$NODE_DIR/containerd/config.toml"
    wait_until containerd 30 test -S "$sock" || die "containerd did not start"
}

kubelet_ready() {
    "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" get node "$NODE_NAME" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True
}

kubelet_up() {
    if running kubelet && kubelet_ready; then
        say "kubelet already running"
        return 0
    fi
    stop kubelet
    mkdir -p "$NODE_DIR/kubelet"
    [ -f "$PKI/kubelet.crt" ] || cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
    kubeconfig "$NODE_DIR/kubelet.kubeconfig" kubelet
    # The kubelet acts as its node: the bootstrap policy's system:node role (this API
    # server authorizes with RBAC only, without the Node authorizer).
    "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" create clusterrolebinding sluice-e2e-node \
        --clusterrole system:node --user "system:node:$NODE_NAME" >/dev/null 2>&1 || true
    printf 'nameserver 127.0.0.1\n' >"$NODE_DIR/resolv.conf"
    cat >"$NODE_DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $(port_for kubelet)
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(port_for kubelet-healthz kubelet)
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$NODE_DIR/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
resolvConf: $NODE_DIR/resolv.conf
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
# Pod logs beside the components' (kept after e2e/down; a deleted pod's go with it).
podLogsDir: $LOGS/pods
EOF
    say "starting kubelet $KUBERNETES_VERSION (node $NODE_NAME, $NODE_IP)"
    start kubelet "$BIN/kubelet" --config "$NODE_DIR/kubelet/config.yaml" \
        --kubeconfig "$NODE_DIR/kubelet.kubeconfig" --root-dir "$NODE_DIR/kubelet/root" \
        --cert-dir "$NODE_DIR/kubelet/pki" --hostname-override "$NODE_NAME" \
        --node-ip "$NODE_IP" --node-labels "$NODE_LABEL" --v=1
    wait_until kubelet 90 kubelet_ready || die "the kubelet's node did not become Ready; see $LOGS/kubelet.log"
    # Environments made before this node carried every pod: the taint it was registered
    # with then, and the process runner's node, go.
    "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" taint node "$NODE_NAME" sluice.dev/node- >/dev/null 2>&1 || true
    "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" delete node sluice-e2e-node --ignore-not-found >/dev/null 2>&1 || true
}

scheduler_up() {
    if running kube-scheduler; then
        say "kube-scheduler already running"
        return 0
    fi
    [ -f "$PKI/scheduler.crt" ] || cert scheduler "/CN=system:kube-scheduler"
    kubeconfig "$STATE/scheduler.kubeconfig" scheduler
    say "starting kube-scheduler $KUBERNETES_VERSION"
    start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$STATE/scheduler.kubeconfig" \
        --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
        --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$(port_for kube-scheduler)" \
        --leader-elect=false --v=1
}

# Service ClusterIPs, for pods and for the host: kube-proxy in iptables mode.
proxy_up() {
    if running kube-proxy; then
        say "kube-proxy already running"
        return 0
    fi
    apt_install iptables conntrack
    [ -f "$PKI/kube-proxy.crt" ] || cert kube-proxy "/CN=system:kube-proxy"
    kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy
    say "starting kube-proxy $KUBERNETES_VERSION (iptables)"
    # --conntrack-max-per-core 0: leave the machine's conntrack table size alone.
    start kube-proxy "$BIN/kube-proxy" --kubeconfig "$STATE/kube-proxy.kubeconfig" \
        --proxy-mode iptables --cluster-cidr "$POD_SUBNET" --hostname-override "$NODE_NAME" \
        --healthz-bind-address "127.0.0.1:$(port_for kube-proxy-healthz kube-proxy)" \
        --metrics-bind-address "127.0.0.1:$(port_for kube-proxy-metrics kube-proxy)" \
        --conntrack-max-per-core 0 --v=1
}

node_up() {
    registry_up
    containerd_up
    kubelet_up
    scheduler_up
    proxy_up
    set_env NODE_NAME "$NODE_NAME"
    set_env CONTAINERD_ADDRESS "$NODE_DIR/containerd/containerd.sock"
    say "node $NODE_NAME Ready: kubelet, containerd $CONTAINERD_VERSION, runc $RUNC_VERSION (images from $(get_env REGISTRY))"
}

# Stops the node's containers with it: the kubelet first (so it restarts nothing), then
# every pod sandbox and container through containerd, then containerd, and the mounts
# and network namespaces they leave.
node_down() {
    stop kubelet
    stop kube-scheduler
    stop kube-proxy
    # The Service rules kube-proxy wrote go with it.
    [ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
    if running containerd; then
        local ctr=$CACHE/containerd-$CONTAINERD_VERSION/bin/ctr sock=$NODE_DIR/containerd/containerd.sock
        "$ctr" --address "$sock" -n k8s.io tasks ls -q 2>/dev/null | while read -r t; do
            "$ctr" --address "$sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
        done
    fi
    stop containerd
    pkill -f "containerd-shim-runc-v2 -namespace k8s.io" 2>/dev/null || true
    if [ -d "$NODE_DIR" ]; then
        grep -o " $NODE_DIR[^ ]*" /proc/mounts | sort -r | while read -r m; do
            umount -l "$m" 2>/dev/null || true
        done
        # The pods' network namespaces (CNI names them cni-<uuid>) and addresses.
        ip netns list 2>/dev/null | awk '/^cni-/ {print $1}' | while read -r n; do
            ip netns del "$n" 2>/dev/null || true
        done
        rm -rf "$NODE_DIR/cni/ipam"
    fi
    stop registry
}

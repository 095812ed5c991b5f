// Build input for e2e/up: etcd at the version k8s.io/kubernetes (see ../kubernetes) uses.
// go.etcd.io/etcd/server/v3 replaces its sibling modules with relative paths, so
// `go install` refuses it; this module requires the published siblings instead.
module sluice.dev/e2e/toolchain/etcd

go 1.23.0

require (
	go.etcd.io/etcd/api/v3 v3.6.4
	go.etcd.io/etcd/client/pkg/v3 v3.6.4
	go.etcd.io/etcd/client/v3 v3.6.4
	go.etcd.io/etcd/pkg/v3 v3.6.4
	go.etcd.io/etcd/server/v3 v3.6.4
)

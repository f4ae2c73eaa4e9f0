// Package testenv starts a real Kubernetes control plane (kube-apiserver and
// etcd through controller-runtime's envtest) with sidewall's
// ContainerNetworkPolicy CRD and Cilium's own CRDs installed, for tests and
// the local demo.
//
// The binaries come from $KUBEBUILDER_ASSETS, or from bin/k8s of the
// repository when the variable is unset; `make tools` builds them. There is no
// scheduler, kubelet or kube-controller-manager: Pods are plain API objects
// and garbage collection by owner reference does not run.
package testenv

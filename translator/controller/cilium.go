package controller

import (
	"errors"
	"fmt"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
)

// ErrCiliumCRDsMissing means the cluster does not serve the
// CiliumNetworkPolicy resource, so there is nothing to translate into.
var ErrCiliumCRDsMissing = errors.New("cilium CRDs missing: the cluster does not serve cilium.io/v2 CiliumNetworkPolicy; install Cilium (or its CRDs) before sidewall-controller")

// CheckCiliumCRDs asks the API server's discovery whether cilium.io/v2
// CiliumNetworkPolicy is served. Without it the CNP watch would only log
// "no matches for kind" forever, so the controller refuses to start.
func CheckCiliumCRDs(cfg *rest.Config) error {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return fmt.Errorf("create discovery client: %w", err)
	}
	gv := ciliumv2.SchemeGroupVersion.String()
	list, err := dc.ServerResourcesForGroupVersion(gv)
	if apierrors.IsNotFound(err) {
		return ErrCiliumCRDsMissing
	}
	if err != nil {
		return fmt.Errorf("discover %s: %w", gv, err)
	}
	for _, r := range list.APIResources {
		if r.Kind == ciliumv2.CNPKindDefinition {
			return nil
		}
	}
	return ErrCiliumCRDsMissing
}

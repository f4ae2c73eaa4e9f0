package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/cilium/cilium/pkg/k8s"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	slimnetworkingv1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/api/networking/v1"
	policytypes "github.com/cilium/cilium/pkg/policy/types"
	policyutils "github.com/cilium/cilium/pkg/policy/utils"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/translator"
)

// How the generated CNP makes Cilium enforce HTTP rules depends on the
// other policies of the pods (translator.CNPOptions): where none puts them
// into default deny, the CNP does, with the complement of its L7 peers;
// where some do, it must not, or its complement would open what they
// close. The controller decides it the way Cilium's repository does, from
// Cilium's own parse of every CiliumNetworkPolicy,
// CiliumClusterwideNetworkPolicy and NetworkPolicy that is not sidewall's
// (computePolicyEnforcementAndRules: a rule selecting the endpoint with
// DefaultDeny set).

// +kubebuilder:rbac:groups=cilium.io,resources=ciliumclusterwidenetworkpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch

// l7Context is what the generated CNP of an L7 policy depends on.
type l7Context struct {
	opts translator.CNPOptions
	// undenied lists, per direction, selected pods that no other policy
	// default-denies while others are: the CNP cannot add its complement
	// (it would open the others), so Cilium does not enforce the HTTP
	// rules on them.
	undeniedEgress, undeniedIngress []string
}

// l7Context reads the policies around an L7 policy's selected pods.
func (r *PolicyReconciler) l7Context(ctx context.Context, policy *v1alpha1.ContainerNetworkPolicy, sc scope) (l7Context, error) {
	var out l7Context
	ns, pods := sc.ns, sc.pods
	entries, err := r.otherPolicyEntries(ctx, policy.Namespace)
	if err != nil {
		return out, err
	}
	var deniedEg, deniedIn int
	var freeEg, freeIn []string
	for i := range pods {
		lbls := translator.IdentityLabels(&pods[i], ns, translator.DefaultClusterName)
		eg, in := false, false
		for _, e := range entries {
			if e.Node || !e.DefaultDeny || e.Subject == nil || !e.Subject.Matches(lbls) {
				continue
			}
			if e.Ingress {
				in = true
			} else {
				eg = true
			}
		}
		name := pods[i].Namespace + "/" + pods[i].Name
		if eg {
			deniedEg++
		} else {
			freeEg = append(freeEg, name)
		}
		if in {
			deniedIn++
		} else {
			freeIn = append(freeIn, name)
		}
	}
	// Any pod default-denied by others: no complement (it would open them).
	out.opts.OthersDefaultDeny = translator.DefaultDeny{Egress: deniedEg > 0, Ingress: deniedIn > 0}
	if deniedEg > 0 {
		out.undeniedEgress = freeEg
	}
	if deniedIn > 0 {
		out.undeniedIngress = freeIn
	}

	// Siblings: the other policies with L7 rules that select one of the
	// same pods (the scope holds only valid ones).
	for i := range sc.others {
		o := &sc.others[i]
		if !hasL7(o) {
			continue
		}
		if rs, err := translator.ToRuleSet(o); err == nil {
			out.opts.Siblings = append(out.opts.Siblings, rs)
		}
	}
	return out, nil
}

// otherPolicyEntries parses, as Cilium's agent does, the policies that
// apply in the namespace and are not sidewall's.
func (r *PolicyReconciler) otherPolicyEntries(ctx context.Context, ns string) (policytypes.PolicyEntries, error) {
	logger := slog.New(slog.DiscardHandler)
	var out policytypes.PolicyEntries
	var cnps ciliumv2.CiliumNetworkPolicyList
	if err := r.Client.List(ctx, &cnps, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list CiliumNetworkPolicies: %w", err)
	}
	for i := range cnps.Items {
		cnp := &cnps.Items[i]
		if cnp.Labels[translator.LabelManagedBy] == translator.ManagedBy {
			continue
		}
		// A CNP Cilium refuses is not enforced: it puts nothing into
		// default deny.
		if rules, err := cnp.Parse(logger, translator.DefaultClusterName); err == nil {
			out = append(out, policyutils.RulesToPolicyEntries(rules)...)
		}
	}
	var ccnps ciliumv2.CiliumClusterwideNetworkPolicyList
	if err := r.Client.List(ctx, &ccnps); err != nil {
		return nil, fmt.Errorf("list CiliumClusterwideNetworkPolicies: %w", err)
	}
	for i := range ccnps.Items {
		if rules, err := ccnps.Items[i].Parse(logger, translator.DefaultClusterName); err == nil {
			out = append(out, policyutils.RulesToPolicyEntries(rules)...)
		}
	}
	var knps networkingv1.NetworkPolicyList
	if err := r.Client.List(ctx, &knps, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list NetworkPolicies: %w", err)
	}
	for i := range knps.Items {
		raw, err := json.Marshal(&knps.Items[i])
		if err != nil {
			return nil, err
		}
		var slim slimnetworkingv1.NetworkPolicy
		if err := json.Unmarshal(raw, &slim); err != nil {
			return nil, err
		}
		if entries, err := k8s.ParseNetworkPolicy(logger, translator.DefaultClusterName, &slim); err == nil {
			out = append(out, entries...)
		}
	}
	return out, nil
}

// l7PoliciesInNamespace maps a change of another policy (a CNP or a
// NetworkPolicy of the namespace, or any CCNP) to the L7 policies whose
// generated CNP may depend on it.
func (r *PolicyReconciler) l7PoliciesInNamespace(ctx context.Context, obj client.Object) []reconcile.Request {
	if obj.GetLabels()[translator.LabelManagedBy] == translator.ManagedBy {
		return nil
	}
	var list v1alpha1.ContainerNetworkPolicyList
	var opts []client.ListOption
	if obj.GetNamespace() != "" {
		opts = append(opts, client.InNamespace(obj.GetNamespace()))
	}
	if err := r.Client.List(ctx, &list, opts...); err != nil {
		log.FromContext(ctx).Error(err, "list policies for a change of another policy", "name", obj.GetName())
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		if hasL7(&list.Items[i]) {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return reqs
}

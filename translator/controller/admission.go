package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/translator"
)

// annotationSpecHash holds a hash of the admission object as sidewall
// generated it, so that a reconcile with nothing to change sends no request.
const annotationSpecHash = "sidewall.io/spec-hash"

// Event reasons of the breakout-risk checks.
const (
	// ReasonAdmissionApplied: the admission policy and binding were created
	// or changed.
	ReasonAdmissionApplied = "AdmissionApplied"
	// ReasonAdmissionRemoved: they were deleted (spec.admission is None, or
	// the policy is invalid).
	ReasonAdmissionRemoved = "AdmissionRemoved"
)

// ensureAdmission creates, updates or deletes the policy's
// ValidatingAdmissionPolicy and binding to follow spec.admission. An invalid
// policy restricts nothing, so it gets none.
func (r *PolicyReconciler) ensureAdmission(ctx context.Context, policy *v1alpha1.ContainerNetworkPolicy, valid bool) error {
	if !valid {
		return r.deleteAdmission(ctx, policy.Namespace, policy.Name, policy)
	}
	vap, binding, err := translator.AdmissionPolicy(policy)
	if err != nil {
		// The selector cannot be expressed at admission: the user must
		// change the policy, so this is reported and not retried.
		r.Recorder.Eventf(policy, nil, corev1.EventTypeWarning, v1alpha1.ReasonAdmissionFailed, "Admission",
			"admission policy not generated: %v", err)
		return r.deleteAdmission(ctx, policy.Namespace, policy.Name, policy)
	}
	if vap == nil {
		return r.deleteAdmission(ctx, policy.Namespace, policy.Name, policy)
	}
	// The policy first, so that the binding never refers to a missing or
	// stale policy for longer than one request.
	changed1, err := r.applyAdmissionObject(ctx, vap, &admissionv1.ValidatingAdmissionPolicy{})
	if err != nil {
		return err
	}
	changed2, err := r.applyAdmissionObject(ctx, binding, &admissionv1.ValidatingAdmissionPolicyBinding{})
	if err != nil {
		return err
	}
	if changed1 || changed2 {
		log.FromContext(ctx).Info("applied admission policy", "name", vap.Name, "admission", policy.Spec.Admission)
		r.Recorder.Eventf(policy, nil, corev1.EventTypeNormal, ReasonAdmissionApplied, "Admission",
			"applied ValidatingAdmissionPolicy and binding %s (admission %s)", vap.Name, policy.Spec.Admission)
	}
	return nil
}

// applyAdmissionObject server-side applies desired unless the live object
// (read into live, from the cache) already carries its hash.
func (r *PolicyReconciler) applyAdmissionObject(ctx context.Context, desired, live client.Object) (bool, error) {
	raw, err := json.Marshal(desired)
	if err != nil {
		return false, fmt.Errorf("encode %s: %w", desired.GetName(), err)
	}
	sum := sha256.Sum256(raw)
	hash := hex.EncodeToString(sum[:16])
	kind := desired.GetObjectKind().GroupVersionKind().Kind
	switch err := r.Client.Get(ctx, client.ObjectKeyFromObject(desired), live); {
	case err == nil:
		if live.GetAnnotations()[annotationSpecHash] == hash {
			return false, nil
		}
	case apierrors.IsNotFound(err):
	default:
		return false, fmt.Errorf("get %s %s: %w", kind, desired.GetName(), err)
	}
	u := &unstructured.Unstructured{}
	if err := json.Unmarshal(raw, &u.Object); err != nil {
		return false, fmt.Errorf("decode %s: %w", desired.GetName(), err)
	}
	delete(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	ann := u.GetAnnotations()
	ann[annotationSpecHash] = hash
	u.SetAnnotations(ann)
	if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u),
		client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return false, fmt.Errorf("apply %s %s: %w", kind, desired.GetName(), err)
	}
	return true, nil
}

// deleteAdmission removes the admission policy and binding of the policy
// ns/name, if sidewall generated them for it. policy, when not nil, gets an
// Event. The cluster-scoped objects cannot have the namespaced policy as
// owner, so no garbage collector would remove them.
func (r *PolicyReconciler) deleteAdmission(ctx context.Context, ns, name string, policy *v1alpha1.ContainerNetworkPolicy) error {
	key := types.NamespacedName{Name: translator.AdmissionPolicyName(ns, name)}
	deleted := false
	for _, obj := range []client.Object{&admissionv1.ValidatingAdmissionPolicyBinding{}, &admissionv1.ValidatingAdmissionPolicy{}} {
		if err := r.Client.Get(ctx, key, obj); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return fmt.Errorf("get admission object %s: %w", key.Name, err)
		}
		if obj.GetLabels()[translator.LabelManagedBy] != translator.ManagedBy || obj.GetAnnotations()[translator.LabelPolicy] != ns+"/"+name {
			continue
		}
		uid := obj.GetUID()
		if err := r.Client.Delete(ctx, obj, client.Preconditions{UID: &uid}); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete admission object %s: %w", key.Name, err)
		}
		deleted = true
	}
	if deleted {
		log.FromContext(ctx).Info("deleted admission policy", "name", key.Name)
		if policy != nil {
			r.Recorder.Eventf(policy, nil, corev1.EventTypeNormal, ReasonAdmissionRemoved, "Admission",
				"deleted ValidatingAdmissionPolicy and binding %s", key.Name)
		}
	}
	return nil
}

// policyForAdmissionObject maps an event on a generated admission object
// to its policy, so that an outside edit or deletion is undone.
func policyForAdmissionObject(_ context.Context, obj client.Object) []reconcile.Request {
	if obj.GetLabels()[translator.LabelManagedBy] != translator.ManagedBy {
		return nil
	}
	ns, name, ok := strings.Cut(obj.GetAnnotations()[translator.LabelPolicy], "/")
	if !ok {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}}
}

// recordRisks records a Warning Event for each risky container that was not
// reported for this policy before, and forgets the ones that are gone, so a
// pod that comes back risky is reported again.
func (r *PolicyReconciler) recordRisks(policy *v1alpha1.ContainerNetworkPolicy, risks []translator.ContainerRisk) {
	key := types.NamespacedName{Namespace: policy.Namespace, Name: policy.Name}
	now := make(map[string]bool, len(risks))
	var before map[string]bool
	if v, ok := r.reported.Load(key); ok {
		before = v.(map[string]bool)
	}
	for _, risk := range risks {
		s := risk.String()
		now[s] = true
		if before[s] {
			continue
		}
		pod := &corev1.Pod{}
		pod.Namespace, pod.Name = policy.Namespace, risk.Pod
		pod.APIVersion, pod.Kind = "v1", "Pod"
		r.Recorder.Eventf(policy, pod, corev1.EventTypeWarning, v1alpha1.ReasonBreakoutRisk, "Analyze",
			"%s could escape container-level enforcement", s)
	}
	if len(before) > 0 && len(risks) == 0 {
		r.Recorder.Eventf(policy, nil, corev1.EventTypeNormal, v1alpha1.ReasonNoBreakoutRisk, "Analyze",
			"no restricted container can escape container-level enforcement any more")
	}
	r.reported.Store(key, now)
}

package controller

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/policy/api"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/translator"
)

const (
	// FieldOwner is the server-side apply field manager of every generated
	// CiliumNetworkPolicy and of the policy status.
	FieldOwner = "sidewall-controller"

	// DefaultMaxConcurrentReconciles is enough to keep the API server busy
	// on a small control plane without starving it.
	DefaultMaxConcurrentReconciles = 4

	// eventSource names sidewall in the Events it records.
	eventSource = "sidewall-controller"
)

// Event reasons, in addition to the condition reasons of v1alpha1.
const (
	// ReasonCreated: the generated CNP was created.
	ReasonCreated = "Created"
	// ReasonUpdated: the generated CNP was changed to follow the policy.
	ReasonUpdated = "Updated"
	// ReasonRepaired: the generated CNP was restored after an outside edit
	// or deletion.
	ReasonRepaired = "Repaired"
	// ReasonDeleted: the generated CNP was deleted because the policy is
	// invalid, needs no CNP, or is gone.
	ReasonDeleted = "Deleted"
)

// Options configure the controller.
type Options struct {
	// MaxConcurrentReconciles is the number of policies reconciled in
	// parallel; DefaultMaxConcurrentReconciles when zero.
	MaxConcurrentReconciles int
}

// PolicyReconciler reconciles a ContainerNetworkPolicy into its owned
// CiliumNetworkPolicy and its status.
type PolicyReconciler struct {
	Client client.Client
	// APIReader reads past the cache, to tell an object that is missing
	// from one that the cache has not seen yet.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder

	cache policyCache
	// reported holds, per policy, the risky containers already reported
	// with an Event (types.NamespacedName -> map[string]bool).
	reported sync.Map
	// conflicts holds, per policy, the admission object conflict last
	// reported with an Event (types.NamespacedName -> string).
	conflicts sync.Map
}

// SetupWithManager registers the reconciler and its watches with mgr. The
// manager's cache should be configured with ConfigureManager first.
func SetupWithManager(mgr ctrl.Manager, opts Options) error {
	if opts.MaxConcurrentReconciles == 0 {
		opts.MaxConcurrentReconciles = DefaultMaxConcurrentReconciles
	}
	r := &PolicyReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Scheme:    mgr.GetScheme(),
		Recorder:  mgr.GetEventRecorder(eventSource),
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("containernetworkpolicy").
		// Status-only updates, most of them sidewall's own, need no
		// reconcile.
		For(&v1alpha1.ContainerNetworkPolicy{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// A hand edit or deletion of a generated CNP lands here and is
		// undone by the next apply. Status writes by Cilium are ignored.
		Owns(&ciliumv2.CiliumNetworkPolicy{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{},
				predicate.AnnotationChangedPredicate{}))).
		Watches(&corev1.Pod{},
			handler.EnqueueRequestsFromMapFunc(r.policiesForPod),
			builder.WithPredicates(podChanged)).
		// Pods are selected by their identity labels, their namespace's
		// labels among them, as Cilium selects endpoints.
		Watches(&corev1.Namespace{},
			handler.EnqueueRequestsFromMapFunc(r.policiesInNamespace),
			builder.WithPredicates(predicate.LabelChangedPredicate{})).
		// Other policies decide how the CNP of an L7 policy makes Cilium
		// enforce its HTTP rules (others.go).
		Watches(&ciliumv2.CiliumNetworkPolicy{}, handler.EnqueueRequestsFromMapFunc(r.l7PoliciesInNamespace),
			builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}))).
		Watches(&ciliumv2.CiliumClusterwideNetworkPolicy{}, handler.EnqueueRequestsFromMapFunc(r.l7PoliciesInNamespace),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&networkingv1.NetworkPolicy{}, handler.EnqueueRequestsFromMapFunc(r.l7PoliciesInNamespace),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// One policy's grants can make another's L7 rules imprecise.
		Watches(&v1alpha1.ContainerNetworkPolicy{}, r.l7Siblings(),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// Generated admission objects are cluster-scoped and cannot be
		// owned; an outside edit or deletion is mapped back by label.
		Watches(&admissionv1.ValidatingAdmissionPolicy{}, handler.EnqueueRequestsFromMapFunc(policyForAdmissionObject),
			builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&admissionv1.ValidatingAdmissionPolicyBinding{}, handler.EnqueueRequestsFromMapFunc(policyForAdmissionObject),
			builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		WithOptions(controller.Options{MaxConcurrentReconciles: opts.MaxConcurrentReconciles}).
		Complete(r)
}

// +kubebuilder:rbac:groups=sidewall.io,resources=containernetworkpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=sidewall.io,resources=containernetworkpolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=sidewall.io,resources=containernetworkpolicies/finalizers,verbs=update
// +kubebuilder:rbac:groups=cilium.io,resources=ciliumnetworkpolicies,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=pods;namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingadmissionpolicies;validatingadmissionpolicybindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete

// Reconcile brings the generated CNP and the status of one policy in line
// with its spec and the pods it selects.
func (r *PolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	logger := log.FromContext(ctx)

	policy := &v1alpha1.ContainerNetworkPolicy{}
	if err := r.Client.Get(ctx, req.NamespacedName, policy); err != nil {
		if apierrors.IsNotFound(err) {
			r.cache.forget(req.NamespacedName)
			r.reported.Delete(req.NamespacedName)
			r.conflicts.Delete(req.NamespacedName)
			if err := r.deleteAdmission(ctx, req.Namespace, req.Name, nil); err != nil {
				return ctrl.Result{}, err
			}
			return ctrl.Result{}, r.deleteOrphan(ctx, req.NamespacedName)
		}
		return ctrl.Result{}, fmt.Errorf("get policy: %w", err)
	}
	if !policy.DeletionTimestamp.IsZero() {
		// The garbage collector removes the CNP with its owner; the
		// admission objects have no owner and go now, so that a
		// policy on its way out refuses no more pods.
		return ctrl.Result{}, r.deleteAdmission(ctx, policy.Namespace, policy.Name, nil)
	}

	tr := r.cache.translate(policy)
	in := translator.StatusInput{Invalid: tr.invalid, TranslateErr: tr.err}
	cnp := tr.cnp
	sc, err := r.scope(ctx, policy)
	if err != nil {
		return ctrl.Result{}, err
	}
	if len(in.Invalid) == 0 && tr.err == nil && cnp != nil && hasL7(policy) {
		// The CNP of a policy with HTTP rules depends on the pods' other
		// policies (others.go).
		var l7ctx l7Context
		if l7ctx, err = r.l7Context(ctx, policy, sc); err != nil {
			return ctrl.Result{}, err
		}
		var res translator.L7Result
		cnp, res, in.TranslateErr = translator.ToCNPWith(policy, l7ctx.opts)
		res.UndeniedEgress, res.UndeniedIngress = l7ctx.undeniedEgress, l7ctx.undeniedIngress
		in.L7Message = res.Message()
	}
	switch {
	case len(in.Invalid) > 0:
		err = r.deleteGenerated(ctx, policy, "the policy is invalid")
	case in.TranslateErr != nil:
		err = r.deleteGenerated(ctx, policy, "the policy could not be translated")
	case cnp == nil:
		err = r.deleteGenerated(ctx, policy, "the policy needs no CiliumNetworkPolicy")
	default:
		if in.ApplyErr = r.ensureCNP(ctx, policy, cnp); in.ApplyErr == nil {
			in.CNPName = cnp.Name
		}
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	admissionConflict := false
	if err := r.ensureAdmission(ctx, policy, len(in.Invalid) == 0); err != nil {
		var conflict *translator.NameConflictError
		if !errors.As(err, &conflict) {
			return ctrl.Result{}, err
		}
		admissionConflict = true
		r.reportConflict(ctx, policy, conflict)
	}
	in.Analysis = r.analyze(policy, sc)
	r.recordRisks(policy, in.Analysis.Risks)
	st := translator.Status(policy, in)
	status := &st

	r.recordTransitions(policy, policy.Status.Conditions, status.Conditions)

	if !equality.Semantic.DeepEqual(&policy.Status, status) {
		orig := policy.DeepCopy()
		policy.Status = *status
		if err := r.Client.Status().Patch(ctx, policy, client.MergeFrom(orig), client.FieldOwner(FieldOwner)); err != nil {
			if apierrors.IsNotFound(err) {
				return ctrl.Result{}, nil
			}
			return ctrl.Result{}, fmt.Errorf("update policy status: %w", err)
		}
		logger.V(1).Info("status updated", "pods", status.SelectedPods, "containers", status.SelectedContainers,
			"generatedPolicy", status.GeneratedPolicy)
	}
	var conflict *translator.NameConflictError
	if errors.As(in.ApplyErr, &conflict) {
		// Not retried as an error: nothing is wrong until the object goes.
		return ctrl.Result{RequeueAfter: conflictRetry}, nil
	}
	if in.ApplyErr != nil {
		// Returning the error requeues with backoff; the Translated
		// condition already tells the user why.
		return ctrl.Result{}, in.ApplyErr
	}
	if admissionConflict {
		return ctrl.Result{RequeueAfter: conflictRetry}, nil
	}
	return ctrl.Result{}, nil
}

// scope is what a reconcile reads about the policy's surroundings, once:
// the namespace, the pods the policy selects, and, for a policy with L7
// rules that selects a pod, the other policies of the namespace that select
// one of the same pods (sorted by name).
type scope struct {
	ns       *corev1.Namespace
	selector bool // the policy is valid and has a pod selector
	pods     []corev1.Pod
	others   []v1alpha1.ContainerNetworkPolicy
}

// scope lists the pods and policies of the policy's namespace from the
// cache (which indexes by namespace).
//
// The other policies matter only for L7 (precision, and the complement of
// the CNP) and cost a parse each, so they are read only when the policy has
// L7 rules and selects a pod, and then only those that select one of the
// same pods.
func (r *PolicyReconciler) scope(ctx context.Context, policy *v1alpha1.ContainerNetworkPolicy) (scope, error) {
	var sc scope
	var list corev1.PodList
	if err := r.Client.List(ctx, &list, client.InNamespace(policy.Namespace)); err != nil {
		return sc, fmt.Errorf("list pods: %w", err)
	}
	var err error
	if sc.ns, err = r.namespace(ctx, policy.Namespace); err != nil {
		return sc, err
	}
	sel, ok := r.cache.selector(policy)
	if !ok {
		return sc, nil
	}
	sc.selector = true
	sc.pods = selectedPods(sel, list.Items, sc.ns)
	if len(sc.pods) == 0 || !hasL7(policy) {
		return sc, nil
	}
	var all v1alpha1.ContainerNetworkPolicyList
	if err := r.Client.List(ctx, &all, client.InNamespace(policy.Namespace)); err != nil {
		return sc, fmt.Errorf("list policies: %w", err)
	}
	sort.Slice(all.Items, func(i, j int) bool { return all.Items[i].Name < all.Items[j].Name })
	for i := range all.Items {
		o := &all.Items[i]
		if o.UID == policy.UID {
			continue
		}
		if osel, ok := r.cache.selector(o); ok && len(selectedPods(osel, sc.pods, sc.ns)) > 0 {
			sc.others = append(sc.others, *o)
		}
	}
	return sc, nil
}

// analyze runs translator.Analyze on the policy's scope. The result is
// kept until the policy, those pods or those policies change, so the
// re-queues that follow every write cost no analysis.
func (r *PolicyReconciler) analyze(policy *v1alpha1.ContainerNetworkPolicy, sc scope) translator.Analysis {
	if !sc.selector {
		return translator.Analyze(policy, sc.ns, nil, nil)
	}
	key := analysisKey(policy, sc.ns, sc.pods, sc.others)
	if a, ok := r.cache.analysis(policy, key); ok {
		return a
	}
	a := translator.Analyze(policy, sc.ns, sc.pods, sc.others)
	r.cache.storeAnalysis(policy, key, a)
	return a
}

// ensureCNP makes the live CNP equal to desired: server-side apply with
// force takes back every field sidewall owns, and a full update removes
// fields someone else added, which apply alone would leave in place.
func (r *PolicyReconciler) ensureCNP(ctx context.Context, policy *v1alpha1.ContainerNetworkPolicy, desired *ciliumv2.CiliumNetworkPolicy) error {
	logger := log.FromContext(ctx)
	live := &ciliumv2.CiliumNetworkPolicy{}
	err := r.Client.Get(ctx, client.ObjectKeyFromObject(desired), live)
	switch {
	case err == nil:
	case apierrors.IsNotFound(err):
		// The cache may lag behind a CNP applied a moment ago: ask the
		// API server.
		switch err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(desired), live); {
		case err == nil:
		case apierrors.IsNotFound(err):
			live = nil
		default:
			return fmt.Errorf("get CiliumNetworkPolicy %s: %w", desired.Name, err)
		}
	default:
		return fmt.Errorf("get CiliumNetworkPolicy %s: %w", desired.Name, err)
	}
	// Never write over what this policy does not control: a user's CNP
	// of that name, or another policy's.
	if live != nil && !metav1.IsControlledBy(live, policy) {
		return &translator.NameConflictError{Kind: "CiliumNetworkPolicy", Namespace: live.Namespace, Name: live.Name, Holder: holderOf(live)}
	}
	if live != nil && cnpUpToDate(live, desired) {
		return nil
	}
	u, err := applyObject(desired)
	if err != nil {
		return err
	}
	if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u),
		client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply CiliumNetworkPolicy %s: %w", desired.Name, err)
	}
	applied, err := fromUnstructured(u)
	if err != nil {
		return fmt.Errorf("decode applied CiliumNetworkPolicy %s: %w", desired.Name, err)
	}
	if !cnpUpToDate(applied, desired) {
		// Someone added fields that sidewall does not own; replace the
		// spec as a whole, in one write, so no rule is ever missing.
		applied.Spec = desired.Spec.DeepCopy()
		applied.Specs = desired.Specs.DeepCopy()
		if err := r.Client.Update(ctx, applied, client.FieldOwner(FieldOwner)); err != nil {
			return fmt.Errorf("replace CiliumNetworkPolicy %s: %w", desired.Name, err)
		}
	}

	// The spec is unchanged since the last successful reconcile, so the
	// difference came from outside.
	outside := policy.Status.GeneratedPolicy == desired.Name && policy.Status.ObservedGeneration == policy.Generation &&
		meta.IsStatusConditionTrue(policy.Status.Conditions, v1alpha1.ConditionTranslated)
	reason, verb := ReasonUpdated, "updated"
	switch {
	case outside:
		// An edit, a deletion or a lost label: all look alike from here.
		reason, verb = ReasonRepaired, "restored"
	case live == nil:
		reason, verb = ReasonCreated, "created"
	}
	logger.Info(verb+" CiliumNetworkPolicy", "cnp", desired.Name)
	r.Recorder.Eventf(policy, nil, corev1.EventTypeNormal, reason, "Apply", "%s CiliumNetworkPolicy %s", verb, desired.Name)
	return nil
}

// holderOf describes whose an object is, for a NameConflict.
func holderOf(obj metav1.Object) string {
	if ref := metav1.GetControllerOf(obj); ref != nil {
		return "controlled by " + ref.Kind + " " + ref.Name
	}
	return "no owner"
}

// conflictRetry is how often a policy in NameConflict looks again: the
// conflicting object is outside the controller's caches (they hold only
// sidewall's objects), so its removal raises no event here.
const conflictRetry = 15 * time.Second

// deleteGenerated removes the policy's CNP, if any, so that an invalid or
// untranslatable policy grants nothing.
func (r *PolicyReconciler) deleteGenerated(ctx context.Context, policy *v1alpha1.ContainerNetworkPolicy, why string) error {
	name := translator.CNPName(policy.Name)
	live := &ciliumv2.CiliumNetworkPolicy{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: policy.Namespace, Name: name}, live); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("get CiliumNetworkPolicy %s: %w", name, err)
	}
	if !metav1.IsControlledBy(live, policy) {
		return nil
	}
	if err := r.Client.Delete(ctx, live, client.Preconditions{UID: &live.UID}); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("delete CiliumNetworkPolicy %s: %w", name, err)
	}
	log.FromContext(ctx).Info("deleted CiliumNetworkPolicy", "cnp", name, "why", why)
	r.Recorder.Eventf(policy, nil, corev1.EventTypeWarning, ReasonDeleted, "Delete", "deleted CiliumNetworkPolicy %s: %s", name, why)
	return nil
}

// deleteOrphan removes the CNP of a policy that no longer exists. The
// garbage collector would too, but only where kube-controller-manager runs
// and only eventually; sidewall does it at once and without a finalizer.
func (r *PolicyReconciler) deleteOrphan(ctx context.Context, key types.NamespacedName) error {
	name := translator.CNPName(key.Name)
	live := &ciliumv2.CiliumNetworkPolicy{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: name}, live); err != nil {
		return client.IgnoreNotFound(err)
	}
	owner := metav1.GetControllerOf(live)
	if owner == nil || owner.Kind != "ContainerNetworkPolicy" || owner.Name != key.Name ||
		owner.APIVersion != v1alpha1.GroupVersion.String() {
		return nil
	}
	if err := r.Client.Delete(ctx, live, client.Preconditions{UID: &live.UID}); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("delete CiliumNetworkPolicy %s of deleted policy: %w", name, err)
	}
	log.FromContext(ctx).Info("deleted CiliumNetworkPolicy of deleted policy", "cnp", name)
	return nil
}

// recordTransitions records one Event per condition that changed status or
// reason, so that pod churn does not flood the namespace with Events.
func (r *PolicyReconciler) recordTransitions(policy *v1alpha1.ContainerNetworkPolicy, before, after []metav1.Condition) {
	for _, typ := range []string{v1alpha1.ConditionAccepted, v1alpha1.ConditionTranslated, v1alpha1.ConditionReady, v1alpha1.ConditionL7Precise} {
		now := meta.FindStatusCondition(after, typ)
		if now == nil {
			continue
		}
		was := meta.FindStatusCondition(before, typ)
		if was != nil && was.Status == now.Status && was.Reason == now.Reason && was.Message == now.Message {
			continue
		}
		if was == nil && now.Status == metav1.ConditionTrue {
			// A new policy that works needs no Event beyond the
			// creation of its CNP.
			continue
		}
		if now.Reason == v1alpha1.ReasonNotReady || now.Status == metav1.ConditionUnknown ||
			(typ == v1alpha1.ConditionTranslated && now.Reason == v1alpha1.ReasonInvalid) {
			// Follows from another condition that has its own Event.
			continue
		}
		kind := corev1.EventTypeNormal
		if now.Status != metav1.ConditionTrue {
			kind = corev1.EventTypeWarning
		}
		r.Recorder.Eventf(policy, nil, kind, now.Reason, typ, "%s=%s: %s", typ, now.Status, now.Message)
	}
}

// policiesInNamespace maps a Namespace event (its labels changed) to every
// policy of the namespace: a selector on a namespace label may select, or
// stop selecting, its pods.
func (r *PolicyReconciler) policiesInNamespace(ctx context.Context, obj client.Object) []reconcile.Request {
	var list v1alpha1.ContainerNetworkPolicyList
	if err := r.Client.List(ctx, &list, client.InNamespace(obj.GetName())); err != nil {
		log.FromContext(ctx).Error(err, "list policies for namespace", "namespace", obj.GetName())
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}

// namespace returns the Namespace object name from the cache, nil if it
// does not exist (its pods are then selected without namespace labels).
func (r *PolicyReconciler) namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	var ns corev1.Namespace
	if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, &ns); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("get namespace %s: %w", name, err)
	}
	return &ns, nil
}

// policiesForPod maps a pod event to the policies of its namespace whose
// selector matches the pod. Update events call this for the old and the new
// pod, so a pod leaving a selection is seen too.
func (r *PolicyReconciler) policiesForPod(ctx context.Context, obj client.Object) []reconcile.Request {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil
	}
	var list v1alpha1.ContainerNetworkPolicyList
	if err := r.Client.List(ctx, &list, client.InNamespace(pod.Namespace)); err != nil {
		log.FromContext(ctx).Error(err, "list policies for pod", "pod", client.ObjectKeyFromObject(pod))
		return nil
	}
	ns, err := r.namespace(ctx, pod.Namespace)
	if err != nil {
		log.FromContext(ctx).Error(err, "get namespace for pod", "pod", client.ObjectKeyFromObject(pod))
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		p := &list.Items[i]
		sel, ok := r.cache.selector(p)
		// An invalid policy selects nothing, but its status still needs
		// the pod counts; let it through.
		if !ok || translator.SelectsPod(sel, pod, ns) {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(p)})
		}
	}
	return reqs
}

// siblingDelay batches the re-evaluation of L7 precision: a burst of
// policy changes in one namespace re-queues each sibling once per window
// instead of once per change (the queue merges waiting duplicates).
const siblingDelay = 5 * time.Second

// l7Siblings re-queues, after siblingDelay, the other policies with L7
// rules that select one of the same pods when a policy's spec changes, is
// created or is deleted: their L7Precise condition depends on the grants of
// every policy that selects containers of their pods.
func (r *PolicyReconciler) l7Siblings() handler.TypedEventHandler[client.Object, reconcile.Request] {
	enqueue := func(ctx context.Context, obj client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		changed, ok := obj.(*v1alpha1.ContainerNetworkPolicy)
		if !ok {
			return
		}
		logger := log.FromContext(ctx)
		var pods corev1.PodList
		if err := r.Client.List(ctx, &pods, client.InNamespace(changed.Namespace)); err != nil {
			logger.Error(err, "list pods for L7 precision", "namespace", changed.Namespace)
			return
		}
		sel, ok := r.cache.selector(changed)
		if !ok {
			// An invalid policy grants nothing, but it may have been
			// valid before this change.
			sel = api.WildcardEndpointSelector
		}
		ns, err := r.namespace(ctx, changed.Namespace)
		if err != nil {
			logger.Error(err, "get namespace for L7 precision", "namespace", changed.Namespace)
			return
		}
		shared := selectedPods(sel, pods.Items, ns)
		if len(shared) == 0 {
			return
		}
		var list v1alpha1.ContainerNetworkPolicyList
		if err := r.Client.List(ctx, &list, client.InNamespace(changed.Namespace)); err != nil {
			logger.Error(err, "list policies for L7 precision", "namespace", changed.Namespace)
			return
		}
		for i := range list.Items {
			p := &list.Items[i]
			if p.UID == changed.UID || !hasL7(p) {
				continue
			}
			if psel, ok := r.cache.selector(p); ok && len(selectedPods(psel, shared, ns)) > 0 {
				q.AddAfter(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(p)}, siblingDelay)
			}
		}
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, e.Object, q)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, e.ObjectNew, q)
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, e.Object, q)
		},
	}
}

// hasL7 reports whether the policy has any HTTP rule, without parsing it.
func hasL7(p *v1alpha1.ContainerNetworkPolicy) bool {
	for i := range p.Spec.Egress {
		for _, pr := range p.Spec.Egress[i].ToPorts {
			if pr.Rules != nil && len(pr.Rules.HTTP) > 0 {
				return true
			}
		}
	}
	for i := range p.Spec.Ingress {
		for _, pr := range p.Spec.Ingress[i].ToPorts {
			if pr.Rules != nil && len(pr.Rules.HTTP) > 0 {
				return true
			}
		}
	}
	return false
}

// podChanged lets through pod events that can change what a policy
// selects: creation, deletion, labels, the container lists and the phase
// (finished pods are not counted). Other status updates, by far the most
// frequent, are dropped.
var podChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		old, ok1 := e.ObjectOld.(*corev1.Pod)
		cur, ok2 := e.ObjectNew.(*corev1.Pod)
		if !ok1 || !ok2 {
			return true
		}
		return !equality.Semantic.DeepEqual(old.Labels, cur.Labels) ||
			old.DeletionTimestamp.IsZero() != cur.DeletionTimestamp.IsZero() ||
			old.Status.Phase != cur.Status.Phase ||
			!equality.Semantic.DeepEqual(old.Spec.Containers, cur.Spec.Containers) ||
			!equality.Semantic.DeepEqual(old.Spec.InitContainers, cur.Spec.InitContainers) ||
			!equality.Semantic.DeepEqual(old.Spec.EphemeralContainers, cur.Spec.EphemeralContainers)
	},
}

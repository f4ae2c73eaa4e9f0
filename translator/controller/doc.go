// Package controller is the controller-runtime reconciler around the
// translator: it turns each ContainerNetworkPolicy into its owned
// CiliumNetworkPolicy with server-side apply, repairs that CNP when someone
// edits or deletes it, and keeps the policy's status (conditions, selected
// pods and containers) current as pods come and go.
//
// The translation itself lives in package translator; this package only
// reads the cache, writes to the API server and records Events.
//
// An invalid policy fails closed: its generated CNP is deleted (or never
// created). The generated CNP's allow rules open the pod, so removing them is
// the restrictive direction; the deny rules go with it, which is why
// admission rejects everything it can before a policy is stored.
//
// The controller deletes the generated CNP itself when it sees its policy
// gone, without a finalizer, so deleting a policy never waits for the
// controller. The owner reference on the CNP lets the cluster's garbage
// collector remove it too, which covers deletions while the controller is
// down.
package controller

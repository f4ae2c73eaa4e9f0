package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/fsnotify/fsnotify"
	"k8s.io/apimachinery/pkg/types"
)

// Op is what happened to a container cgroup directory.
type Op int

const (
	// Created: the runtime made the container's cgroup (it is about to
	// start, or has started, the container's first process).
	Created Op = iota + 1
	// Removed: the container is gone.
	Removed
)

func (o Op) String() string {
	switch o {
	case Created:
		return "created"
	case Removed:
		return "removed"
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// Event is a container cgroup appearing in or leaving a watched pod cgroup.
type Event struct {
	Op        Op
	PodUID    types.UID
	Path      string
	Container ContainerID
	// CgroupID is the directory's inode; for Removed it is the id it had
	// when it was seen, or 0 if it was never seen.
	CgroupID uint64
}

// Watcher reports container cgroups created in and removed from pod cgroup
// directories with inotify, so a new container is classified when its
// runtime creates its cgroup instead of at the next resync. The cgroup2
// filesystem emits inotify create and delete events for mkdir and rmdir.
type Watcher struct {
	driver Driver
	fsw    *fsnotify.Watcher
	events chan Event
	errors chan error
	done   chan struct{}

	mu      sync.Mutex
	pods    map[string]types.UID // watched pod dir -> uid
	pending map[string]types.UID // pod dir not created yet -> uid
	parents map[string]int       // parent dir watched for pending pods -> how many
	dirs    map[types.UID]string
	ids     map[string]uint64 // container dir -> cgroup id
	once    sync.Once
}

// NewWatcher starts a watcher for pod cgroups laid out by driver d.
func NewWatcher(d Driver) (*Watcher, error) {
	if d != Cgroupfs && d != Systemd {
		return nil, fmt.Errorf("new watcher: driver %q: want cgroupfs or systemd", d)
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("new watcher: %w", err)
	}
	w := &Watcher{
		driver: d, fsw: fsw,
		events:  make(chan Event, 256),
		errors:  make(chan error, 16),
		done:    make(chan struct{}),
		pods:    map[string]types.UID{},
		pending: map[string]types.UID{},
		parents: map[string]int{},
		dirs:    map[types.UID]string{},
		ids:     map[string]uint64{},
	}
	go w.loop()
	return w, nil
}

// Events delivers container cgroup events. It is closed by Close.
func (w *Watcher) Events() <-chan Event { return w.events }

// Errors delivers inotify errors (such as a queue overflow, after which the
// caller should resync). It is closed by Close.
func (w *Watcher) Errors() <-chan error { return w.errors }

// Watch starts watching the pod cgroup directory podDir of pod uid and
// returns the container cgroups already in it. The watch is in place before
// the directory is listed, so a container created meanwhile is reported at
// least once (possibly twice).
//
// A pod the agent learns about before kubelet has created its cgroup is
// watched through its parent (the QoS tier directory): Watch returns no
// events and no error, and the containers are reported as Events once the
// pod directory appears. Only a missing parent is an error (matching
// ErrNotReady).
func (w *Watcher) Watch(uid types.UID, podDir string) ([]Event, error) {
	podDir = filepath.Clean(podDir)
	w.mu.Lock()
	old, ok := w.dirs[uid]
	w.mu.Unlock()
	if ok && old != podDir {
		if err := w.Unwatch(uid); err != nil {
			return nil, err
		}
	}
	evs, err := w.activate(uid, podDir)
	if !errors.Is(err, ErrNotReady) {
		return evs, err
	}

	parent := filepath.Dir(podDir)
	w.mu.Lock()
	_, already := w.pending[podDir]
	w.pending[podDir] = uid
	w.dirs[uid] = podDir
	if !already {
		w.parents[parent]++
	}
	first := !already && w.parents[parent] == 1
	w.mu.Unlock()
	if first {
		if err := w.fsw.Add(parent); err != nil {
			w.dropPending(podDir)
			if errors.Is(err, fs.ErrNotExist) {
				return nil, &NotReadyError{Pod: string(uid), Path: parent}
			}
			return nil, fmt.Errorf("watch %s: %w", parent, err)
		}
	}
	// The pod directory may have appeared before the parent was watched.
	if _, err := os.Stat(podDir); err == nil {
		w.dropPending(podDir)
		return w.activate(uid, podDir)
	}
	return nil, nil
}

// activate watches an existing pod directory and lists its containers.
func (w *Watcher) activate(uid types.UID, podDir string) ([]Event, error) {
	if err := w.fsw.Add(podDir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &NotReadyError{Pod: string(uid), Path: podDir}
		}
		return nil, fmt.Errorf("watch %s: %w", podDir, err)
	}
	w.mu.Lock()
	w.pods[podDir] = uid
	w.dirs[uid] = podDir
	w.mu.Unlock()
	entries, err := os.ReadDir(podDir)
	if err != nil {
		_ = w.Unwatch(uid)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &NotReadyError{Pod: string(uid), Path: podDir}
		}
		return nil, fmt.Errorf("list %s: %w", podDir, err)
	}
	var out []Event
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if ev, ok := w.created(uid, filepath.Join(podDir, e.Name())); ok {
			out = append(out, ev)
		}
	}
	return out, nil
}

// dropPending forgets a pending pod and unwatches its parent when no other
// pending pod needs it.
func (w *Watcher) dropPending(podDir string) {
	parent := filepath.Dir(podDir)
	w.mu.Lock()
	if _, ok := w.pending[podDir]; !ok {
		w.mu.Unlock()
		return
	}
	delete(w.pending, podDir)
	w.parents[parent]--
	last := w.parents[parent] == 0
	if last {
		delete(w.parents, parent)
	}
	_, alsoPod := w.pods[parent]
	w.mu.Unlock()
	if last && !alsoPod {
		_ = w.fsw.Remove(parent)
	}
}

// Unwatch stops watching pod uid. Unwatching a pod that is not watched is
// not an error.
func (w *Watcher) Unwatch(uid types.UID) error {
	w.mu.Lock()
	dir, ok := w.dirs[uid]
	_, isPending := w.pending[dir]
	w.mu.Unlock()
	if !ok {
		return nil
	}
	if isPending {
		w.dropPending(dir)
		w.mu.Lock()
		delete(w.dirs, uid)
		w.mu.Unlock()
		return nil
	}
	w.forget(uid, dir)
	// The kernel drops the watch itself when the directory is removed.
	if err := w.fsw.Remove(dir); err != nil && !errors.Is(err, fsnotify.ErrNonExistentWatch) {
		return fmt.Errorf("unwatch %s: %w", dir, err)
	}
	return nil
}

func (w *Watcher) forget(uid types.UID, dir string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.pods, dir)
	delete(w.dirs, uid)
	for p := range w.ids {
		if filepath.Dir(p) == dir {
			delete(w.ids, p)
		}
	}
}

// created builds the event for a new directory if it is a container cgroup.
func (w *Watcher) created(uid types.UID, path string) (Event, bool) {
	cid, ok := ParseContainerDir(w.driver, filepath.Base(path))
	if !ok {
		return Event{}, false
	}
	id, err := ID(path)
	if err != nil {
		// Removed again before we looked: the Remove event follows.
		return Event{}, false
	}
	w.mu.Lock()
	w.ids[path] = id
	w.mu.Unlock()
	return Event{Op: Created, PodUID: uid, Path: path, Container: cid, CgroupID: id}, true
}

func (w *Watcher) loop() {
	defer close(w.events)
	defer close(w.errors)
	for {
		select {
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			w.handle(ev)
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			select {
			case w.errors <- err:
			case <-w.done:
				return
			}
		}
	}
}

func (w *Watcher) handle(ev fsnotify.Event) {
	path := filepath.Clean(ev.Name)
	w.mu.Lock()
	uid, inPod := w.pods[filepath.Dir(path)]
	pendingUID, isPending := w.pending[path]
	w.mu.Unlock()

	var out []Event
	switch {
	case isPending && ev.Has(fsnotify.Create):
		w.dropPending(path)
		evs, err := w.activate(pendingUID, path)
		if err != nil {
			w.sendErr(fmt.Errorf("pod %s: %w", pendingUID, err))
			return
		}
		out = evs
	case !inPod:
		return
	case ev.Has(fsnotify.Create):
		e, ok := w.created(uid, path)
		if !ok {
			return
		}
		out = []Event{e}
	case ev.Has(fsnotify.Remove):
		cid, isCtr := ParseContainerDir(w.driver, filepath.Base(path))
		if !isCtr {
			return
		}
		w.mu.Lock()
		id := w.ids[path]
		delete(w.ids, path)
		w.mu.Unlock()
		out = []Event{{Op: Removed, PodUID: uid, Path: path, Container: cid, CgroupID: id}}
	}
	for _, e := range out {
		select {
		case w.events <- e:
		case <-w.done:
			return
		}
	}
}

func (w *Watcher) sendErr(err error) {
	select {
	case w.errors <- err:
	case <-w.done:
	}
}

// Close stops the watcher and closes Events and Errors. It is idempotent.
func (w *Watcher) Close() error {
	var err error
	w.once.Do(func() {
		close(w.done)
		err = w.fsw.Close()
	})
	return err
}

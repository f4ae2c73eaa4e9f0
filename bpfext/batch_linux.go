package bpfext

import (
	"errors"
	"fmt"
	"reflect"

	"github.com/cilium/ebpf"
)

// readChunk is the number of entries one BPF_MAP_LOOKUP_BATCH call reads.
// A hash map bucket holding more entries than this fails the call with
// ENOSPC, which a chunk this large makes practically impossible.
const readChunk = 4096

// readAll reads every entry of a map with BPF_MAP_LOOKUP_BATCH: a few
// syscalls for thousands of entries, where Iterate costs two per entry
// (about 50 ms for the rules of a 1,000-pod node, on every reconcile). Map
// types without batch operations (LPM tries) are iterated.
func readAll[K, V any](m *ebpf.Map, what string) ([]K, []V, error) {
	var outK []K
	var outV []V
	keys, vals := make([]K, readChunk), make([]V, readChunk)
	var cursor ebpf.MapBatchCursor
	for first := true; ; first = false {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		outK, outV = append(outK, keys[:n]...), append(outV, vals[:n]...)
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return outK, outV, nil
		case err == nil:
			continue
		case first && errors.Is(err, ebpf.ErrNotSupported):
			return iterateAll[K, V](m, what)
		default:
			return nil, nil, fmt.Errorf("list %s: %w", what, err)
		}
	}
}

func iterateAll[K, V any](m *ebpf.Map, what string) ([]K, []V, error) {
	var outK []K
	var outV []V
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		outK, outV = append(outK, k), append(outV, v)
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", what, err)
	}
	return outK, outV, nil
}

// countEntries counts the entries of a map of any key and value layout,
// in batches where the map type has them.
func countEntries(m *ebpf.Map) (int, error) {
	keyT := reflect.SliceOf(reflect.ArrayOf(int(m.KeySize()), reflect.TypeFor[byte]()))
	valT := reflect.SliceOf(reflect.ArrayOf(int(m.ValueSize()), reflect.TypeFor[byte]()))
	keys := reflect.MakeSlice(keyT, readChunk, readChunk).Interface()
	vals := reflect.MakeSlice(valT, readChunk, readChunk).Interface()
	var cursor ebpf.MapBatchCursor
	total := 0
	for first := true; ; first = false {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		total += n
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return total, nil
		case err == nil:
			continue
		case first && errors.Is(err, ebpf.ErrNotSupported):
			n := 0
			k := make([]byte, m.KeySize())
			var v []byte
			it := m.Iterate()
			for it.Next(&k, &v) {
				n++
			}
			return n, it.Err()
		default:
			return 0, err
		}
	}
}

// batchPut writes keys[i] -> values[i] in one syscall where the map type
// supports batches, element by element otherwise.
func batchPut(m *ebpf.Map, what string, keys, values any) error {
	kv, vv := reflect.ValueOf(keys), reflect.ValueOf(values)
	if kv.Len() == 0 {
		return nil
	}
	_, err := m.BatchUpdate(keys, values, nil)
	if err == nil {
		return nil
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("update %s: %w", what, err)
	}
	for i := 0; i < kv.Len(); i++ {
		if err := m.Put(kv.Index(i).Interface(), vv.Index(i).Interface()); err != nil {
			return fmt.Errorf("update %s: %w", what, err)
		}
	}
	return nil
}

// batchDelete removes keys; keys that are absent are not an error.
func batchDelete(m *ebpf.Map, what string, keys any) error {
	kv := reflect.ValueOf(keys)
	if kv.Len() == 0 {
		return nil
	}
	if _, err := m.BatchDelete(keys, nil); err == nil {
		return nil
	}
	// A batch stops at the first missing key; finish one by one.
	for i := 0; i < kv.Len(); i++ {
		if err := m.Delete(kv.Index(i).Interface()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %s: %w", what, err)
		}
	}
	return nil
}

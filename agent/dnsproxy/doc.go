// Package dnsproxy is the node agent's DNS proxy for containers with
// toFQDNs rules. The datapath redirects such a container's DNS, sent to a
// server its rules allow, to the proxy on the pod's loopback; the proxy
// forwards the query to that server from inside the pod's network
// namespace (so Cilium sees the pod's own lookup), checks that the answer
// answers the query, lets the agent write what it teaches into the
// container's learned-address map, and only then passes the answer on. So
// the first connection after a lookup finds its address already learned.
//
// ParseQuery and ParseAnswer hold every check on the bytes; they are
// fuzzed (FuzzParseAnswer) and never learn from what they refuse.
package dnsproxy

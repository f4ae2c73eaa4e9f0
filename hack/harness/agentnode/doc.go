// Package agentnode runs sidewall's node agent for a test the way a node
// runs it: a real control plane (testenv), a local node with real cgroups,
// network namespaces and processes (localnode), a namespace of the test's
// own, and the agent assembled by agent.Start on a unique pin directory.
// Everything is removed when the test ends, whether it passed or not.
package agentnode

// Package test holds Portcullis's end-to-end tests: the agent binary, real
// eBPF programs, real network namespaces and real processes.
package test

// Package deploy holds no code: its test checks the Kubernetes manifests
// in kubernetes/ against the Kubernetes API types and against the
// control-plane config and Envoy bootstrap they carry.
package deploy

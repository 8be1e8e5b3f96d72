// Package strictjson decodes JSON that people and programs send to the
// control plane (API bodies, the state file) strictly: a document is one
// value and nothing after it, object keys match field names exactly
// (case-sensitively), a key appears once per object, and unknown keys are
// errors. encoding/json accepts all four, and so would act on a body that
// does not say what its sender meant.
//
// It is a thin wrapper over github.com/go-json-experiment/json, the
// implementation of the proposed encoding/json/v2, whose defaults are
// these rules; once encoding/json/v2 leaves GOEXPERIMENT, only the import
// changes.
package strictjson

import (
	"github.com/go-json-experiment/json"
)

// Unmarshal decodes data into v, refusing trailing data, duplicate keys,
// keys that match a field only case-insensitively, and unknown keys.
// Types with an UnmarshalJSON method decode through it, as with
// encoding/json.
func Unmarshal(data []byte, v any) error {
	return json.Unmarshal(data, v, json.RejectUnknownMembers(true))
}

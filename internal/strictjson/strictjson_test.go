package strictjson

import (
	"strings"
	"testing"
)

type endpoint struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
}

type set struct {
	Endpoints []endpoint `json:"endpoints"`
}

func TestUnmarshal(t *testing.T) {
	var s set
	if err := Unmarshal([]byte(` {"endpoints": [{"address": "127.0.0.1", "port": 1}]} `+"\n"), &s); err != nil || len(s.Endpoints) != 1 || s.Endpoints[0].Port != 1 {
		t.Fatalf("%+v %v", s, err)
	}
}

// Each of these is accepted by encoding/json's Decoder as the API used it
// (DisallowUnknownFields, then a More() check for trailing data).
func TestUnmarshalRefuses(t *testing.T) {
	for _, tt := range []struct{ name, in, want string }{
		{"trailing brackets", `{"endpoints": []}}}]]`, "after top-level value"},
		{"trailing value", `{"endpoints": []} {}`, "after top-level value"},
		{"key in another case", `{"endpoints": [{"Address": "127.0.0.1", "port": 1}]}`, `unknown object member name "Address"`},
		{"top-level key in another case", `{"ENDPOINTS": []}`, `unknown object member name "ENDPOINTS"`},
		{"duplicate key", `{"endpoints": [{"address": "127.0.0.1", "address": "10.0.0.1", "port": 1}]}`, `duplicate object member name "address"`},
		{"unknown key", `{"endpoints": [], "extra": 1}`, `unknown object member name "extra"`},
		{"empty", ``, "EOF"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var s set
			if err := Unmarshal([]byte(tt.in), &s); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: %v, want an error containing %q", tt.in, err, tt.want)
			}
		})
	}
}

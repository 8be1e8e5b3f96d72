package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

// A node that moved between replicas is listed once, as the replica it is
// connected to sees it; this replica's own published copies are ignored
// in favour of its live view.
func TestMergeNodes(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	node := func(id, replica string, connected bool, lastSeen int) server.NodeStatus {
		return server.NodeStatus{ID: id, Replica: replica, Connected: connected, LastSeen: t0.Add(time.Duration(lastSeen) * time.Second)}
	}
	local := []server.NodeStatus{node("moved-here", "a", true, 5), node("left-a", "a", false, 3), node("only-a", "a", true, 1)}
	published := []server.NodeStatus{
		node("moved-here", "b", false, 4), // b lost it; a has it now
		node("left-a", "b", true, 2),      // a lost it; b has it now
		node("only-a", "a", false, 0),     // a's own, older copy
		node("on-b-and-c", "b", false, 7), // disconnected from both: the later
		node("on-b-and-c", "c", false, 6),
	}
	got := map[string]string{}
	for _, n := range mergeNodes("a", local, published) {
		if _, dup := got[n.ID]; dup {
			t.Errorf("node %s listed twice", n.ID)
		}
		got[n.ID] = fmt.Sprintf("%s/%v", n.Replica, n.Connected)
	}
	want := map[string]string{"moved-here": "a/true", "left-a": "b/true", "only-a": "a/true", "on-b-and-c": "b/false"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("merged (-want +got):\n%s", diff)
	}
}

// Store errors map to the status codes openapi.yaml names: a write that
// lost a race is 409, an unreachable store is 503.
func TestStoreErrorsMapToStatusCodes(t *testing.T) {
	for _, tt := range []struct {
		err  error
		code int
	}{
		{fmt.Errorf("%w: another writer stored version 7 first", store.ErrStale), http.StatusConflict},
		{fmt.Errorf("%w: no quorum", store.ErrUnavailable), http.StatusServiceUnavailable},
		{fmt.Errorf("%w: already there", control.ErrConflict), http.StatusConflict},
		{errors.New("disk on fire"), http.StatusInternalServerError},
	} {
		h := &handler{opts: Options{Logger: slog.New(slog.DiscardHandler)}}
		if code, _ := h.errorStatus(httptest.NewRequest("PUT", "/v1/clusters/brokers/endpoints", nil), tt.err); code != tt.code {
			t.Errorf("%v: %d, want %d", tt.err, code, tt.code)
		}
	}
}

// A failing dependency makes /healthz say "degraded" and why, still with
// 200: the control plane keeps serving Envoy.
func TestHealthDegraded(t *testing.T) {
	f := newFixture(t, "")
	srv := server.New(server.Options{Registerer: prometheus.NewRegistry()})
	ctl := control.New(model.Default(), store.NewFile(""), srv, nil)
	if err := ctl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	fleet := Fleet{Controller: ctl, Server: srv, Checks: map[string]func(context.Context) error{
		"etcd": func(context.Context) error { return fmt.Errorf("%w: no leader", store.ErrUnavailable) },
	}}
	f.ts.Config.Handler = NewHandler(fleet, Options{Registry: prometheus.NewRegistry()})
	code, body := f.call(t, "GET", "/healthz", "", "", true)
	var h Health
	if err := json.Unmarshal(body, &h); err != nil || code != 200 || h.Status != "degraded" || h.Degraded["etcd"] == "" {
		t.Errorf("healthz: %d %s", code, body)
	}
}

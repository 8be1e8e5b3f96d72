package tests

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// docker-compose.replicas.yaml, laid over docker-compose.yaml, must agree
// with itself, with compose/envoy-replicas.yaml and with
// envoy/bootstrap.yaml: the etcd members with each other, the replicas
// with the members, Envoy with the replicas. And the replicas' command
// line must start a real control plane on the shared config file.
func TestComposeReplicasAgree(t *testing.T) {
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	p := composeConfig(t, root, "docker-compose.yaml", "docker-compose.replicas.yaml")
	base := composeConfig(t, root, "docker-compose.yaml")

	// etcd: three members that name each other by their fixed addresses.
	var clientURLs, initial []string
	for _, name := range []string{"etcd1", "etcd2", "etcd3"} {
		s, ok := p.Services[name]
		if !ok {
			t.Fatalf("service %s missing", name)
		}
		if !strings.HasPrefix(s.Image, "gcr.io/etcd-development/etcd:v3.") {
			t.Errorf("%s: image %s, want the official etcd 3.x", name, s.Image)
		}
		ip := s.Networks["mqtt"].IPv4Address
		env := s.Environment
		if env["ETCD_NAME"] != name || env["ETCD_ADVERTISE_CLIENT_URLS"] != "http://"+ip+":2379" ||
			env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] != "http://"+ip+":2380" {
			t.Errorf("%s (%s): name and URLs %v", name, ip, env)
		}
		clientURLs = append(clientURLs, "http://"+ip+":2379")
		initial = append(initial, name+"=http://"+ip+":2380")
		if s.Healthcheck == nil || len(s.Volumes) == 0 {
			t.Errorf("%s: health check %v, volumes %v", name, s.Healthcheck, s.Volumes)
		}
	}
	for _, name := range []string{"etcd1", "etcd2", "etcd3"} {
		if got := p.Services[name].Environment["ETCD_INITIAL_CLUSTER"]; got != strings.Join(initial, ",") {
			t.Errorf("%s: initial cluster %q, want %q", name, got, strings.Join(initial, ","))
		}
	}

	// The replicas: the shared config file, switched to etcd by flags,
	// xDS on every interface, distinct names and API ports.
	bootRaw, err := os.ReadFile(filepath.Join(root, "compose", "envoy-replicas.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var boot map[string]any
	if err := yaml.Unmarshal(bootRaw, &boot); err != nil {
		t.Fatal(err)
	}
	var bootXDS []string
	for _, ep := range get(t, boot, "static_resources", "clusters", 0, "load_assignment", "endpoints", 0, "lb_endpoints").([]any) {
		sa := get(t, ep, "endpoint", "address", "socket_address").(map[string]any)
		bootXDS = append(bootXDS, net.JoinHostPort(fmt.Sprint(sa["address"]), fmt.Sprint(sa["port_value"])))
	}
	var replicaXDS, names, apiPorts []string
	for _, name := range []string{"xds", "xds-2"} {
		s, ok := p.Services[name]
		if !ok {
			t.Fatalf("service %s missing", name)
		}
		flags := flagValues(s.Command)
		if flags["--store"] != "etcd" || flags["--config"] != "/etc/mqtt-sticky/mqtt-sticky.yaml" {
			t.Errorf("%s: command %v", name, s.Command)
		}
		if got := strings.Split(flags["--etcd-endpoints"], ","); !sameSet(got, clientURLs) {
			t.Errorf("%s: etcd endpoints %v, members %v", name, got, clientURLs)
		}
		host, port, _ := net.SplitHostPort(flags["--xds"])
		if host != "0.0.0.0" {
			t.Errorf("%s: xDS on %s: Envoy, at its own address, cannot reach it", name, flags["--xds"])
		}
		replicaXDS = append(replicaXDS, net.JoinHostPort(name, port))
		names = append(names, flags["--replica-name"])
		for _, pp := range s.Ports {
			apiPorts = append(apiPorts, pp.Published)
		}
		for _, m := range []string{"etcd1", "etcd2", "etcd3"} {
			if s.DependsOn[m].Condition != "service_healthy" {
				t.Errorf("%s does not wait for a healthy %s", name, m)
			}
		}
		// The token: the base file's secret, never the environment; xDS
		// leaves the replica's loopback, over the base file's mutual TLS.
		if s.Environment[api.TokenEnv] != "" || !slices.ContainsFunc(s.Secrets, func(sec struct{ Source, Target string }) bool {
			return p.Secrets[sec.Source].Environment == api.TokenEnv && sec.Target == base.Services["xds"].Secrets[0].Target
		}) || s.Healthcheck == nil || !slices.Contains(s.Healthcheck.Test, "--token-file") {
			t.Errorf("%s: the token secret, or a health check that uses it, is missing: %+v %v", name, s.Secrets, s.Healthcheck)
		}
		if !sameMounts(s.Volumes, base.Services["xds"].Volumes, "/var/lib/mqtt-sticky") {
			t.Errorf("%s mounts %v; the base xds mounts %v (less the state volume)", name, s.Volumes, base.Services["xds"].Volumes)
		}
		if s.DependsOn["certs"].Condition != "service_completed_successfully" {
			t.Errorf("%s does not wait for the certificates", name)
		}
	}
	if !sameSet(replicaXDS, bootXDS) {
		t.Errorf("the replicas serve xDS on %v, compose/envoy-replicas.yaml names %v", replicaXDS, bootXDS)
	}
	if names[0] == "" || names[0] == names[1] {
		t.Errorf("replica names %v", names)
	}
	if len(apiPorts) != 2 || apiPorts[0] == apiPorts[1] {
		t.Errorf("published API ports %v", apiPorts)
	}

	// Envoy: its own address (it must outlive either replica), the MQTT
	// port published, the replicas' bootstrap, both replicas awaited.
	envoy := p.Services["envoy"]
	if envoy.NetworkMode != "" || envoy.Networks["mqtt"] == nil {
		t.Errorf("envoy: network_mode %q, networks %v", envoy.NetworkMode, envoy.Networks)
	}
	cp, err := model.LoadFile(filepath.Join(root, "compose", "mqtt-sticky.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	published := map[int]bool{}
	for _, pp := range envoy.Ports {
		published[pp.Target] = pp.Published == fmt.Sprint(pp.Target)
	}
	for _, l := range cp.Listeners {
		if !published[l.Port] {
			t.Errorf("envoy does not publish MQTT port %d", l.Port)
		}
	}
	// The same mounts as in the base file (the TLS certificates), but the
	// bootstrap.
	mounts := map[string]string{}
	for _, v := range envoy.Volumes {
		mounts[v.Target] = v.Source
	}
	for _, v := range base.Services["envoy"].Volumes {
		want := v.Source
		if slices.Contains(envoy.Command, v.Target) {
			want = filepath.Join(root, "compose", "envoy-replicas.yaml")
		}
		if mounts[v.Target] != want {
			t.Errorf("envoy mounts %q on %s, want %q", mounts[v.Target], v.Target, want)
		}
	}
	if len(mounts) != len(base.Services["envoy"].Volumes) {
		t.Errorf("envoy mounts %v, the base file %v", envoy.Volumes, base.Services["envoy"].Volumes)
	}
	for _, r := range []string{"xds", "xds-2"} {
		if envoy.DependsOn[r].Condition != "service_healthy" {
			t.Errorf("envoy does not wait for a healthy %s", r)
		}
	}

	// compose/envoy-replicas.yaml is envoy/bootstrap-mtls.yaml but for the
	// xds endpoints and the admin address offered to the control plane.
	mainRaw, err := os.ReadFile(filepath.Join(root, "envoy", "bootstrap-mtls.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var mainBoot map[string]any
	if err := yaml.Unmarshal(mainRaw, &mainBoot); err != nil {
		t.Fatal(err)
	}
	endpoints := []any{"static_resources", "clusters", 0, "load_assignment", "endpoints", 0, "lb_endpoints"}
	set(t, mainBoot, nil, endpoints...)
	set(t, boot, nil, endpoints...)
	delete(get(t, mainBoot, "node").(map[string]any), "metadata")
	if diff := cmp.Diff(mainBoot, boot); diff != "" {
		t.Errorf("compose/envoy-replicas.yaml differs from envoy/bootstrap-mtls.yaml beyond the xds endpoints (-bootstrap +replicas):\n%s", diff)
	}

	// The replica's command line, with a real etcd and local addresses,
	// starts a control plane on the compose config file. Its certificate
	// and token files, which compose mounts, come from here.
	etcd := startEtcd(t, 1)
	flags := flagValues(p.Services["xds"].Command)
	certDir := t.TempDir()
	xdsCerts(t, certDir)
	tokenFile := filepath.Join(t.TempDir(), "api_token")
	const token = "compose-replica-token-0123456789"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	replica := &controlPlane{
		name:       flags["--replica-name"],
		configPath: filepath.Join(root, "compose", "mqtt-sticky.yaml"),
		xdsAddr:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		apiAddr:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		storeArgs:  []string{"--store", flags["--store"], "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--replica-name", flags["--replica-name"]},
		extraArgs:  append(xdsTLSFlags(certDir), "--api-token-file", tokenFile),
		token:      token,
	}
	replica.start(t)
	t.Cleanup(func() { replica.stop(t) })
	if st, err := replica.client.Status(t.Context()); err != nil || st.Replica != flags["--replica-name"] {
		t.Errorf("the replica answers %+v, %v", st, err)
	}
}

// sameMounts reports whether got mounts what want does, but for the
// mount at skip.
func sameMounts(got, want []struct{ Source, Target string }, skip string) bool {
	var w []struct{ Source, Target string }
	for _, v := range want {
		if v.Target != skip {
			w = append(w, v)
		}
	}
	return slices.Equal(got, w)
}

// composeConfig is `docker compose config` of the files, merged in order.
func composeConfig(t *testing.T, root string, files ...string) composeProject {
	t.Helper()
	args := []string{"compose"}
	for _, f := range files {
		args = append(args, "-f", filepath.Join(root, f))
	}
	cmd := exec.Command("docker", append(args, "config", "--format", "json")...)
	cmd.Env = append(os.Environ(), api.TokenEnv+"="+composeToken)
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("docker compose config failed (run `make compose-tool` and set DOCKER_CONFIG=%s/.tools/docker): %v\n%s", root, err, stderr)
	}
	var p composeProject
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// flagValues reads --flag value pairs from a command line.
func flagValues(args []string) map[string]string {
	out := map[string]string{}
	for i := 0; i+1 < len(args); i++ {
		if strings.HasPrefix(args[i], "--") {
			out[args[i]] = args[i+1]
		}
	}
	return out
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

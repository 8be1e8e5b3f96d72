package tests

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// Dependencies stay on maintained releases: no package of this module
// imports the archived gopkg.in/yaml.v3, and the Prometheus client is at
// least the release this project moved to from the 2022 one (v1.12.0).
func TestDependencies(t *testing.T) {
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	goList := func(args ...string) string {
		cmd := exec.Command("go", append([]string{"list"}, args...)...)
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list %v: %v", args, err)
		}
		return string(out)
	}
	imports := goList("-f", `{{.ImportPath}}: {{join .Imports " "}} {{join .TestImports " "}} {{join .XTestImports " "}}`, "./...")
	for _, line := range strings.Split(imports, "\n") {
		if strings.Contains(line, " gopkg.in/yaml.v3") {
			t.Errorf("imports the archived gopkg.in/yaml.v3 (use go.yaml.in/yaml/v3 or sigs.k8s.io/yaml): %s", line[:strings.Index(line, ":")])
		}
	}
	v := strings.TrimSpace(goList("-m", "-f", "{{.Version}}", "github.com/prometheus/client_golang"))
	var major, minor int
	if _, err := fmt.Sscanf(v, "v%d.%d.", &major, &minor); err != nil || major != 1 || minor < 25 {
		t.Errorf("github.com/prometheus/client_golang is at %s, want v1.25.0 or newer", v)
	}
}

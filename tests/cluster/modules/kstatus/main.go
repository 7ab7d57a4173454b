// kstatus reads one Kubernetes object (JSON or YAML) on stdin and prints the
// result of kstatus's status.Compute for it, the same computation the health
// checks of Argo CD and Flux follow for custom resources:
//
//	kubectl get fj NAME -o json | kstatus
//	{"status":"InProgress","message":"..."}
//
// Test tooling for the e2e tests; built by tests/cluster/build.sh.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type output struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kubectl get KIND NAME -o json | kstatus")
		os.Exit(2)
	}
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	raw, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	// YAMLToJSON passes JSON through (JSON is YAML).
	data, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return fmt.Errorf("parsing the object: %w", err)
	}
	// Unstructured's own decoder keeps integers int64 (encoding/json would make them float64,
	// which kstatus refuses for metadata.generation); it also needs apiVersion and kind.
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("stdin must hold one object (JSON or YAML) with apiVersion and kind: %w", err)
	}
	res, err := status.Compute(u)
	if err != nil {
		return fmt.Errorf("computing status: %w", err)
	}
	return json.NewEncoder(out).Encode(output{Status: res.Status.String(), Message: res.Message})
}

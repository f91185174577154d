// Times Porcupine on its own Jepsen etcd corpus, for `quorumlab check --bench --baseline`.
// Copied into a Porcupine checkout by run.sh (it uses that package's test helpers
// parseJepsenLog and etcdModel); not part of quorumlab's build.
package porcupine

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"testing"
	"time"
)

type corpusRow struct {
	History      string  `json:"history"`
	Linearizable bool    `json:"linearizable"`
	Expected     *bool   `json:"expected"`
	MedianMs     float64 `json:"median_ms"`
	MinMs        float64 `json:"min_ms"`
}

// expectations reads `checkJepsen(t, N, true|false)` from Porcupine's own tests.
func expectations(t *testing.T) map[string]bool {
	src, err := os.ReadFile("porcupine_test.go")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`checkJepsen\(t, (\d+), (true|false)\)`)
	out := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		n, _ := strconv.Atoi(m[1])
		out[filepath.Base(filepathFor(n))] = m[2] == "true"
	}
	return out
}

func filepathFor(n int) string {
	return "test_data/jepsen/etcd_" + leftPad(strconv.Itoa(n)) + ".log"
}

func leftPad(s string) string {
	for len(s) < 3 {
		s = "0" + s
	}
	return s
}

func TestCorpusTiming(t *testing.T) {
	repeats, err := strconv.Atoi(os.Getenv("REPEATS"))
	if err != nil || repeats < 1 {
		repeats = 5
	}
	expected := expectations(t)
	files, _ := filepath.Glob("test_data/jepsen/etcd_*.log")
	sort.Strings(files)
	var rows []corpusRow
	for _, f := range files {
		events := parseJepsenLog(f)
		times := make([]float64, 0, repeats)
		var ok bool
		for i := 0; i < repeats; i++ {
			start := time.Now()
			ok = CheckEvents(etcdModel, events)
			times = append(times, float64(time.Since(start).Nanoseconds())/1e6)
		}
		sort.Float64s(times)
		row := corpusRow{History: filepath.Base(f), Linearizable: ok, MedianMs: times[repeats/2], MinMs: times[0]}
		if e, found := expected[row.History]; found {
			row.Expected = &e
		}
		rows = append(rows, row)
	}
	out, _ := json.MarshalIndent(rows, "", "  ")
	if err := os.WriteFile(os.Getenv("OUT"), out, 0o644); err != nil {
		t.Fatal(err)
	}
}

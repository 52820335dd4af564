"""The benchmark harness runs end to end on tiny sizes and writes its JSON (no speed asserts)."""

import json
import subprocess
import sys


def test_quick_run_writes_the_json_schema(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--only", "W1,W2,W4", "--peers", "mp.Pool",
         "--repeat", "1", "--json", str(out), "--markdown", str(tmp_path / "report.md")],
        check=True, timeout=300, capture_output=True,
    )
    data = json.loads(out.read_text())
    assert {"machine", "skipped", "figures"} <= set(data)
    assert data["machine"]["cpus"] >= 1 and data["machine"]["packages"]["pyzmq"]
    systems = {f["system"] for f in data["figures"]}
    assert {"fabric", "mp.Pool"} <= systems
    for figure in data["figures"]:
        assert figure["values"] and all(v > 0 for v in figure["values"]), figure
        assert figure["min"] <= figure["median"] <= figure["max"]
    judged = [f for f in data["figures"] if f["met"] is not None]
    assert judged and all(f["system"] == "fabric" and f["target"] for f in judged)
    assert "| workload |" in (tmp_path / "report.md").read_text()

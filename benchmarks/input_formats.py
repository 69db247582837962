"""Input readers: records/s and peak memory of reading N records in each format.

Writes the same N Dolly-sample records as JSON lines, a JSON array, Parquet, CSV and
a saved Hugging Face dataset, then reads each in a fresh process through
``iterrefine.io.inputs.open_input`` (what ``iterrefine run`` does) and records
the wall time and the peak RSS while opening and iterating, above the RSS once the
readers' libraries are imported. A saved HF dataset is memory-mapped: its pages count
in RSS but are file-backed. Streaming readers keep
memory flat as N grows; the JSON array is read whole by design.

    python benchmarks/input_formats.py --records 200000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from harness import loadavg, machine

ROOT = Path(__file__).parent.parent
# ru_maxrss is inherited from the parent (which built the data), so the peak is read from
# /proc after resetting it (Linux: "5" > clear_refs resets VmHWM to the current RSS).
_READ = """
import sys, time
from iterrefine.io.inputs import InputSpec, open_input
def kib(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1])
import datasets, pyarrow.parquet  # imported first: their size is not the reader's
open('/proc/self/clear_refs', 'w').write('5')
base = kib('VmRSS:')
start = time.perf_counter()
n = sum(1 for _ in open_input(InputSpec(sys.argv[1])).records())
print(n, time.perf_counter() - start, kib('VmHWM:') - base)
"""


def write_inputs(folder: Path, n: int) -> dict[str, Path]:
    base = [json.loads(line) for line in
            (ROOT / "examples" / "dolly_sample.jsonl").read_text().splitlines()]
    rows = [{"id": f"r{i}", **base[i % len(base)]} for i in range(n)]
    paths = {"jsonl": folder / "in.jsonl", "json_array": folder / "in.json",
             "parquet": folder / "in.parquet", "csv": folder / "in.csv", "hf": folder / "hf"}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["json_array"].write_text(json.dumps(rows))
    import csv

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"], row_group_size=10_000)
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    datasets.Dataset.from_list(rows).save_to_disk(str(paths["hf"]))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    load_before = loadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_inputs(Path(tmp), args.records)
        for name, path in paths.items():
            size = (sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir()
                    else path.stat().st_size)
            out = subprocess.run([sys.executable, "-c", _READ, str(path)], capture_output=True,
                                 text=True, check=True, cwd=ROOT).stdout.split()
            count, seconds, peak_kib = int(out[0]), float(out[1]), int(out[2])
            results[name] = {"records": count, "file_mib": round(size / 2**20, 1),
                             "seconds": round(seconds, 2),
                             "records_per_s": round(count / seconds),
                             "peak_rss_above_imports_mib": round(peak_kib / 1024, 1)}
    print(json.dumps({
        "benchmark": "input_formats", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(), "parameters": {"records": args.records},
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "results": results, "at": time.time(),
    }, indent=2))


if __name__ == "__main__":
    main()

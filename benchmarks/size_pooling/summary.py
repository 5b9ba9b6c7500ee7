# Mean AP over datasets (targets, unseen) by split and diameter factor, from per_micrograph.py or pooled.py output: see README.md here.
import json
import sys

import numpy as np

rows = json.load(open(sys.argv[1]))
key = sys.argv[2] if len(sys.argv) > 2 else "corrected"
for group in ("targets", "unseen"):
    for label, keep in (
        ("all", lambda m: True),
        ("no val(0002)", lambda m: not m.endswith("0002")),
        ("test(0003)", lambda m: m.endswith("0003")),
        ("val(0002)", lambda m: m.endswith("0002")),
    ):
        out = {}
        for r in rows:
            if r["group"] != group or not keep(r["micrograph"]):
                continue
            out.setdefault((r.get(key, "pooled"), r["factor"]), {}).setdefault(r["dataset"], []).append(r["ap"])
        line = []
        for (c, f), d in sorted(out.items(), key=str):
            line.append(
                f"{'c' if c is True else 'f' if c is False else c}{f}:{np.mean([np.mean(v) for v in d.values()]):.3f}(n{len(d)})"
            )
        if line:
            print(group, label, " ".join(line))

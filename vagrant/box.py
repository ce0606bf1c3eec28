"""What runs on a Vagrant box of boxes.yaml, as root: `python -m vagrant.box <name>`.

The same records as a matrix guest (vagrant/guest.py) on a real distribution: the engine that
`install --ebpf-enabled` chooses, `tpctl status --json`, the probe record, the faked-old-kernel
fallback and the box's tests; then whether each matches boxes.yaml. Writes
vagrant/results/<name>/ (result.json says ok or what differed). Exit 0 when all matched.
"""
from __future__ import annotations

import json
import os
import sys

import yaml

from vagrant import guest

HERE = os.path.dirname(os.path.abspath(__file__))


def load_boxes(path: str = os.path.join(HERE, "boxes.yaml")) -> dict[str, dict]:
    with open(path, encoding="utf-8") as handle:
        return {b["name"]: b for b in yaml.safe_load(handle)["boxes"]}


def differences(box: dict, choice: dict, host: dict, fallback: dict, tests: dict) -> list[str]:
    """What the box showed that boxes.yaml did not expect. Pure."""
    found = []
    if choice.get("engine") != box["engine"]:
        found.append(f"engine {choice.get('engine')}, expected {box['engine']} ({choice.get('failed_checks')})")
    failed = {line.split(":")[0].removeprefix("[FAIL] ") for line in choice.get("failed_checks", [])}
    for reason in box.get("fallback_reasons", []):
        if reason not in failed:
            found.append(f"the fallback does not name the {reason} check")
    for key, expected in (box.get("facts") or {}).items():
        if host.get(key) != expected:
            found.append(f"{key} is {host.get(key)!r}, expected {expected!r}")
    if not fallback.get("ok"):
        found.append(f"faked 2.6 kernel: engine {fallback.get('engine')}, --no-fallback exit "
                     f"{fallback.get('no_fallback_exit')}")
    if tests.get("failed") or tests.get("skipped") or not tests.get("passed"):
        found.append(f"tests: {tests.get('passed')} passed, {tests.get('failed')} failed, "
                     f"{tests.get('skipped')} skipped")
    return found


def main(name: str) -> int:
    boxes = load_boxes()
    if name not in boxes:
        print(f"vagrant.box: no box {name} in boxes.yaml ({', '.join(boxes)})", file=sys.stderr)
        return 2
    box = boxes[name]
    out = os.path.join(HERE, "results", name)
    os.makedirs(out, exist_ok=True)
    choice = guest.choice(out)
    try:
        with open(os.path.join(out, "status.json"), encoding="utf-8") as handle:
            host = json.load(handle).get("host", {})
    except (OSError, ValueError):
        host = {}
    fallback = guest.fallback({"name": "fake-2.6-uname", "condition": "uname-2.6", "engine": "iptables",
                               "reason": "kernel"})
    tests = guest.run_tests({"tests": box["tests"], "tests_timeout": 3600}, out)
    result = {"box": name, "choice": choice, "fallback": fallback, "tests": tests,
              "differences": differences(box, choice, host, fallback, tests)}
    with open(os.path.join(out, "result.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1, sort_keys=True)
    for line in result["differences"]:
        print(f"vagrant.box {name}: {line}", file=sys.stderr)
    print(f"vagrant.box {name}: {'ok' if not result['differences'] else 'differs from boxes.yaml'}")
    return 0 if not result["differences"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

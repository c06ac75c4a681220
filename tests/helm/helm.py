#!/usr/bin/env python3
"""Helm's own SDK (helm-python-sdk, Helm v4's Go SDK as a shared library)
for the chart tests: renders or lints a chart offline, no helm binary.

  helm.py render <chart> [values.yaml]   -> JSON {template path: manifest}
  helm.py lint <chart> [values.yaml]     -> JSON lint report
  helm.py crds <chart>                   -> JSON [{name, data}]

Helm's errors (schema, template) exit 3 with Helm's message on stderr."""

import json
import sys

import helm_python as helm


def values(argv):
    if len(argv) < 4:
        return None
    with open(argv[3], encoding="utf-8") as f:
        return helm.values_from_yaml(f.read())


def main(argv):
    if len(argv) < 3 or argv[1] not in ("render", "lint", "crds"):
        print(__doc__, file=sys.stderr)
        return 2
    verb, chart = argv[1], argv[2]
    try:
        if verb == "render":
            out = helm.Chart.load(chart).render(values(argv), name="weir", namespace="weir-system", is_install=True)
        elif verb == "lint":
            out = helm.lint(chart, values(argv), namespace="weir-system")
        else:
            out = helm.Chart.load(chart).crds
    except helm.HelmError as e:
        print(str(e), file=sys.stderr)
        return 3
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

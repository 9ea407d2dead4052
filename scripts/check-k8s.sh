#!/usr/bin/env bash
# Validates deploy/k8s: every manifest against the Kubernetes OpenAPI schemas (offline, from
# the PyPI package kubernetes-validate), and the mig-parted config's structure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

K8S_VERSION="${K8S_VERSION:-1.33.0}"
LIB=".tools/kubernetes-validate-1.37.0"
if [ ! -d "$LIB/kubernetes_validate" ]; then
  echo "installing kubernetes-validate 1.37.0 into $LIB"
  python3 -m pip install --quiet --disable-pip-version-check --target "$LIB" kubernetes-validate==1.37.0
fi
export PYTHONPATH="$PWD/$LIB"

mapfile -t manifests < <(find deploy/k8s -name '*.yaml' | sort)
python3 -m kubernetes_validate -k "$K8S_VERSION" --strict --quiet "${manifests[@]}"
echo "k8s: ${#manifests[@]} files valid against Kubernetes $K8S_VERSION (strict)"

python3 - <<'PY'
# mig-parted reads `version: v1` and `mig-configs: NAME -> [ {devices, mig-enabled,
# mig-devices: {PROFILE: COUNT}} ]`; check that, and that each layout fits one H100.
import re, sys, yaml
doc = yaml.safe_load(open("deploy/k8s/node-serve/mig-parted-config.yaml"))
config = yaml.safe_load(doc["data"]["config.yaml"])
assert config["version"] == "v1", "version must be v1"
profile = re.compile(r"^(\d+)g\.(\d+)gb(\+me)?$")
memory_eighths = {"1g.10gb": 1, "1g.20gb": 2, "2g.20gb": 2, "3g.40gb": 4, "4g.40gb": 4, "7g.80gb": 8}
for name, entries in config["mig-configs"].items():
    assert isinstance(entries, list) and entries, f"{name}: a list of device entries"
    for e in entries:
        assert e["devices"] == "all" or all(isinstance(d, int) for d in e["devices"]), f"{name}: devices"
        assert isinstance(e["mig-enabled"], bool), f"{name}: mig-enabled must be a bool"
        devices = e.get("mig-devices", {})
        if not e["mig-enabled"]:
            assert not devices, f"{name}: mig-devices with MIG disabled"
            continue
        compute = memory = 0
        for p, n in devices.items():
            m = profile.match(p)
            assert m and isinstance(n, int) and n > 0, f"{name}: {p}: {n}"
            compute += int(m.group(1)) * n
            memory += memory_eighths[p] * n
        assert compute <= 7 and memory <= 8, f"{name}: {compute}/7 compute and {memory}/8 memory slices"
print("mig-parted config: structure valid,", len(config["mig-configs"]), "layouts fit an H100")
PY

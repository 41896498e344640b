#!/usr/bin/env python3
"""Validates the Knative manifests offline.

    validate.py OUT_DIR

For each kustomization (base, overlays/local, agents): renders it (render.py; compared with
`kubectl kustomize` when kubectl exists), then validates every object: core Kubernetes kinds
with kubernetes-validate (strict, the Kubernetes version it bundles), Knative kinds with
check-jsonschema against the strict schemas in schemas/. An object of any other kind is an error
(no schema = not validated). Finally the schemas themselves must reject known-bad documents, so
that a schema that accepts everything cannot pass. Exits non-zero on any failure.
"""

import copy
import os
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)
import render  # noqa: E402

KUSTOMIZATIONS = ["base", "overlays/local", "agents"]
KNATIVE_SCHEMAS = {
    ("serving.knative.dev/v1", "Service"): "service.json",
    ("eventing.knative.dev/v1", "Broker"): "broker.json",
    ("eventing.knative.dev/v1", "Trigger"): "trigger.json",
}
CORE_API_VERSIONS = {"v1", "apps/v1", "autoscaling/v2", "batch/v1", "networking.k8s.io/v1", "policy/v1", "rbac.authorization.k8s.io/v1"}
BIN = os.path.dirname(sys.executable)


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    return out.returncode, (out.stdout + out.stderr).strip()


def check_jsonschema(schema, files):
    return run([os.path.join(BIN, "check-jsonschema"), "--schemafile", os.path.join(HERE, "schemas", schema), *files])


def main(out_dir):
    failed = False
    totals = {"core": 0, "knative": 0}
    for name in KUSTOMIZATIONS:
        source = os.path.join(HERE, name)
        target = os.path.join(out_dir, name.replace("/", "-"))
        if render.main(["render.py", source, target, "--compare-kubectl"]) != 0:
            failed = True
            continue
        core, knative = [], {}
        for file in sorted(os.listdir(target)):
            path = os.path.join(target, file)
            with open(path) as f:
                obj = yaml.safe_load(f)
            kind_key = (obj.get("apiVersion"), obj.get("kind"))
            if kind_key in KNATIVE_SCHEMAS:
                knative.setdefault(KNATIVE_SCHEMAS[kind_key], []).append(path)
            elif obj.get("apiVersion") in CORE_API_VERSIONS:
                core.append(path)
            else:
                print(f"  FAIL {name}: {kind_key} has no schema here: add one to schemas/ and KNATIVE_SCHEMAS")
                failed = True
        if core:
            code, output = run([os.path.join(BIN, "kubernetes-validate"), "--strict", "--quiet", *core])
            if code != 0:
                print(f"  FAIL {name}: kubernetes-validate\n{output}")
                failed = True
            else:
                print(f"  {name}: {len(core)} core objects valid (kubernetes-validate --strict)")
            totals["core"] += len(core)
        for schema, files in sorted(knative.items()):
            code, output = check_jsonschema(schema, files)
            if code != 0:
                print(f"  FAIL {name}: check-jsonschema {schema}\n{output}")
                failed = True
            else:
                print(f"  {name}: {len(files)} objects valid against schemas/{schema}")
            totals["knative"] += len(files)

    # The schemas must be strict: each known-bad variant must be rejected.
    bad_dir = os.path.join(out_dir, "schema-self-test")
    os.makedirs(bad_dir, exist_ok=True)
    base = os.path.join(out_dir, "base")
    samples = {}
    for file in sorted(os.listdir(base)):
        with open(os.path.join(base, file)) as f:
            obj = yaml.safe_load(f)
        kind_key = (obj.get("apiVersion"), obj.get("kind"))
        if kind_key in KNATIVE_SCHEMAS:
            samples.setdefault(kind_key[1], obj)
    mutations = [
        ("Trigger", "unknown spec field", lambda o: o["spec"].update(filtr={})),
        ("Trigger", "bad backoffPolicy", lambda o: o["spec"]["delivery"].update(backoffPolicy="fibonacci")),
        ("Trigger", "bad backoffDelay", lambda o: o["spec"]["delivery"].update(backoffDelay="500ms")),
        ("Trigger", "no subscriber", lambda o: o["spec"].pop("subscriber")),
        ("Trigger", "non-string filter", lambda o: o["spec"]["filter"]["attributes"].update(agentid=7)),
        ("Broker", "negative retry", lambda o: o["spec"]["delivery"].update(retry=-1)),
        ("Service", "two ports", lambda o: o["spec"]["template"]["spec"]["containers"][0]["ports"].append({"containerPort": 9090})),
        ("Service", "unknown container field", lambda o: o["spec"]["template"]["spec"]["containers"][0].update(imagePolicy="x")),
        ("Service", "non-numeric min-scale", lambda o: o["spec"]["template"]["metadata"]["annotations"].update({"autoscaling.knative.dev/min-scale": "one"})),
        ("Service", "probe without handler", lambda o: o["spec"]["template"]["spec"]["containers"][0].update(readinessProbe={"periodSeconds": 5})),
        ("Service", "bad memory quantity", lambda o: o["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(memory="lots")),
    ]
    rejected = 0
    for i, (kind, what, mutate) in enumerate(mutations):
        if kind not in samples:
            print(f"  FAIL schema self-test: no {kind} in the base to mutate")
            failed = True
            continue
        obj = copy.deepcopy(samples[kind])
        mutate(obj)
        path = os.path.join(bad_dir, f"{i:02d}-{kind.lower()}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(obj, f)
        schema = KNATIVE_SCHEMAS[(obj["apiVersion"], kind)]
        code, _ = check_jsonschema(schema, [path])
        if code == 0:
            print(f"  FAIL schema self-test: schemas/{schema} accepts a {kind} with {what}")
            failed = True
        else:
            rejected += 1
    print(f"  schema self-test: {rejected}/{len(mutations)} known-bad documents rejected")
    print(f"  knative: {totals['core']} core and {totals['knative']} Knative objects checked")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

#!/usr/bin/env python3
"""Renders a Kustomize directory without kustomize, for validation in CI.

Supports exactly the Kustomization fields infra/knative uses, and refuses any other (so the
rendering never silently differs from `kubectl kustomize`): resources (files and directories with
a kustomization.yaml), namespace, labels (pairs, without selectors), images (newName, newTag,
digest), secretGenerator and configMapGenerator (literals, with
generatorOptions.disableNameSuffixHash: true).

    render.py DIR OUT_DIR      writes one YAML file per object into OUT_DIR, prints a summary
    render.py DIR --stdout     prints the rendered multi-document YAML

When `kubectl` is on PATH, `--compare-kubectl` also renders with `kubectl kustomize` and fails
if the two renderings differ.
"""

import base64
import copy
import os
import shutil
import subprocess
import sys

import yaml

KNOWN_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "secretGenerator",
    "configMapGenerator",
    "generatorOptions",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
POD_TEMPLATE_PATHS = {
    "Deployment": ["spec", "template", "spec"],
    "StatefulSet": ["spec", "template", "spec"],
    "DaemonSet": ["spec", "template", "spec"],
    "Job": ["spec", "template", "spec"],
    "CronJob": ["spec", "jobTemplate", "spec", "template", "spec"],
    "Service": ["spec", "template", "spec"],  # serving.knative.dev/v1 Service
}


class RenderError(Exception):
    pass


def load_kustomization(directory):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path) as f:
                k = yaml.safe_load(f) or {}
            unknown = set(k) - KNOWN_FIELDS
            if unknown:
                raise RenderError(f"{path}: unsupported kustomization fields {sorted(unknown)}")
            return k
    raise RenderError(f"{directory}: no kustomization.yaml")


def generated(k, kind):
    key = "secretGenerator" if kind == "Secret" else "configMapGenerator"
    options = k.get("generatorOptions", {})
    out = []
    for gen in k.get(key, []) or []:
        unknown = set(gen) - {"name", "literals", "type"}
        if unknown:
            raise RenderError(f"{key} {gen.get('name')}: unsupported fields {sorted(unknown)}")
        if not options.get("disableNameSuffixHash"):
            raise RenderError(f"{key}: only generatorOptions.disableNameSuffixHash: true is supported")
        data = {}
        for literal in gen.get("literals", []):
            name, sep, value = literal.partition("=")
            if not sep:
                raise RenderError(f"{key} {gen['name']}: literal without '=': {name}")
            data[name] = value
        obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
        if kind == "Secret":
            obj["type"] = gen.get("type", "Opaque")
            obj["data"] = {n: base64.b64encode(v.encode()).decode() for n, v in data.items()}
        else:
            obj["data"] = data
        out.append(obj)
    return out


def set_images(obj, images):
    path = POD_TEMPLATE_PATHS.get(obj.get("kind"))
    if not path:
        return
    node = obj
    for step in path:
        node = node.get(step) if isinstance(node, dict) else None
        if node is None:
            return
    for field in ("containers", "initContainers"):
        for container in node.get(field, []) or []:
            image = container.get("image", "")
            name, tag = image, None
            if "@" in image:
                name = image.split("@", 1)[0]
            elif ":" in image.rsplit("/", 1)[-1]:
                name, tag = image.rsplit(":", 1)
            for rule in images:
                unknown = set(rule) - {"name", "newName", "newTag", "digest"}
                if unknown:
                    raise RenderError(f"images: unsupported fields {sorted(unknown)}")
                if rule["name"] != name:
                    continue
                new_name = rule.get("newName", name)
                if "digest" in rule:
                    container["image"] = f"{new_name}@{rule['digest']}"
                else:
                    new_tag = rule.get("newTag", tag)
                    container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def render(directory):
    k = load_kustomization(directory)
    objects = []
    for resource in k.get("resources", []) or []:
        path = os.path.normpath(os.path.join(directory, resource))
        if os.path.isdir(path):
            objects.extend(render(path))
        elif os.path.isfile(path):
            with open(path) as f:
                for doc in yaml.safe_load_all(f):
                    if doc is not None:
                        objects.append(doc)
        else:
            raise RenderError(f"{directory}: resource {resource} does not exist")
    local = generated(k, "ConfigMap") + generated(k, "Secret")
    objects.extend(local)
    for label in k.get("labels", []) or []:
        unknown = set(label) - {"pairs", "includeSelectors", "includeTemplates"}
        if unknown or label.get("includeSelectors") or label.get("includeTemplates"):
            raise RenderError("labels: only plain pairs (no selectors, no templates) are supported")
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        for label in k.get("labels", []) or []:
            meta.setdefault("labels", {}).update(label.get("pairs", {}))
        if "namespace" in k and obj.get("kind") not in CLUSTER_SCOPED:
            meta["namespace"] = k["namespace"]
        set_images(obj, k.get("images", []) or [])
    seen = set()
    for obj in objects:
        key = (obj.get("apiVersion"), obj.get("kind"), obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if key in seen:
            raise RenderError(f"{directory}: duplicate object {key}")
        seen.add(key)
    return objects


def key(obj):
    m = obj["metadata"]
    return (obj.get("kind", ""), m.get("namespace", ""), m["name"])


def normalized(obj):
    """kubectl wraps long base64 values of Secrets; the bytes are what matters."""
    obj = copy.deepcopy(obj)
    if obj.get("kind") == "Secret" and isinstance(obj.get("data"), dict):
        obj["data"] = {k: "".join(str(v).split()) for k, v in obj["data"].items()}
    return obj


def compare_with_kubectl(directory, objects):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("  kubectl not found: comparison with `kubectl kustomize` skipped")
        return True
    out = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  kubectl kustomize {directory} failed:\n{out.stderr}")
        return False
    theirs = sorted((normalized(d) for d in yaml.safe_load_all(out.stdout) if d), key=key)
    ours = sorted((normalized(o) for o in objects), key=key)
    if theirs == ours:
        print(f"  identical to `kubectl kustomize` ({len(ours)} objects)")
        return True
    print(f"  DIFFERENT from `kubectl kustomize` for {directory}:")
    theirs_by, ours_by = {key(o): o for o in theirs}, {key(o): o for o in ours}
    for k_ in sorted(set(theirs_by) | set(ours_by)):
        if theirs_by.get(k_) != ours_by.get(k_):
            print(f"    {k_}:\n      kubectl: {theirs_by.get(k_)}\n      ours:    {ours_by.get(k_)}")
    return False


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    directory, target = argv[1], argv[2]
    try:
        objects = render(directory)
    except RenderError as e:
        print(f"render error: {e}")
        return 1
    if target == "--stdout":
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
        return 0
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    for i, obj in enumerate(objects):
        name = f"{i:03d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        with open(os.path.join(target, name), "w") as f:
            yaml.safe_dump(obj, f, sort_keys=False)
    kinds = {}
    for obj in objects:
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"  rendered {directory}: {len(objects)} objects ({summary})")
    if "--compare-kubectl" in argv[3:] and not compare_with_kubectl(directory, objects):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

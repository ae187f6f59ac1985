"""Static checks of the deployment files, for machines without Docker or a cluster.

1. docker-compose.yml validates against the Compose specification's JSON
   schema (tests/data/compose-spec/compose-spec.json).
2. Every environment variable docker-compose.yml sets on a Casebook service is
   one that the service's binary accepts (read from the binary's own --help).
3. The same for deploy/kubernetes/base: each Deployment's own env must be
   accepted by its binary, and every ConfigMap/Secret key by at least one
   binary. So neither file can drift from the code.

(Kubernetes schema validation itself is `kubernetes-validate --strict`, in .ci/run.)

Usage: python3 tests/deploy/check_settings.py [target/debug]
"""

import pathlib
import re
import subprocess
import sys

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "debug"

# Dockerfile target -> the command lines whose --help lists what it accepts.
TARGETS = {
    "auth-svc": [["auth-svc"]],
    "case-svc": [["case-svc"]],
    "gateway": [["gateway"]],
    "dev-issuer": [["casebook"], ["casebook", "issuer"]],
}
# Read by the runtime, not by clap.
ALWAYS_ACCEPTED = {"RUST_LOG"}


def accepted(commands):
    names = set(ALWAYS_ACCEPTED)
    for command in commands:
        help_text = subprocess.run(
            [str(BIN / command[0]), *command[1:], "--help"],
            check=True, capture_output=True, text=True,
        ).stdout
        names.update(re.findall(r"\[env: ([A-Z0-9_]+)=", help_text))
    return names


def main():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    schema = yaml.safe_load((ROOT / "tests/data/compose-spec/compose-spec.json").read_text())
    jsonschema.validate(compose, schema)
    print("docker-compose.yml: valid against the Compose specification schema")

    problems = []
    checked = 0
    for name, service in compose["services"].items():
        target = (service.get("build") or {}).get("target")
        if target is None:
            continue  # not built from this repository (postgres)
        if target not in TARGETS:
            problems.append(f"{name}: unknown Dockerfile target {target!r}")
            continue
        known = accepted(TARGETS[target])
        for variable in service.get("environment", {}):
            checked += 1
            if variable not in known:
                problems.append(f"{name}: {variable} is not a setting of {target}")
    print(f"docker-compose.yml: {checked} environment settings checked")
    problems += check_kubernetes()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print("every setting is accepted by the binary it is meant for")


def check_kubernetes():
    problems = []
    every = {target: accepted(commands) for target, commands in TARGETS.items()}
    anyone = set().union(*every.values())
    for path in sorted((ROOT / "deploy/kubernetes/base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kind = doc.get("kind")
            if kind == "Deployment":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    known = every.get(container["name"], set())
                    for variable in (e["name"] for e in container.get("env", [])):
                        if variable not in known:
                            problems.append(f"{path.name}: {variable} is not a setting of {container['name']}")
            elif kind in ("ConfigMap", "Secret"):
                for variable in {**doc.get("data", {}), **doc.get("stringData", {})}:
                    if variable not in anyone:
                        problems.append(f"{path.name}: {variable} is not a setting of any service")
    print("deploy/kubernetes/base: settings checked")
    return problems


if __name__ == "__main__":
    main()

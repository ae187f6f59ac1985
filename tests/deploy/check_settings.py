"""Static checks of the deployment files, for machines without Docker or a cluster.

1. docker-compose.yml validates against the Compose specification's JSON
   schema (tests/data/compose-spec/compose-spec.json).
2. Every environment variable docker-compose.yml sets on a Casebook service is
   one that the service's binary accepts (read from the binary's own --help).
3. The same for deploy/kubernetes/base: each Deployment's own env must be
   accepted by its binary, and every ConfigMap/Secret key by at least one
   binary. So neither file can drift from the code.
4. Compose is safe by default: published ports listen on 127.0.0.1 unless
   overridden, the development issuer runs only under the `dev` profile, and
   no service trusts it unless told to (BETTER_AUTH_URL has no default).
   The Kubernetes base has a NetworkPolicy for every Deployment.

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
    problems += check_compose_safety(compose)
    problems += check_kubernetes()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print("every setting is accepted by the binary it is meant for")


def default_of(value):
    """`${NAME:-default}` -> default; `${NAME:?error}` -> None; text -> text."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+(:?[-?])([^}]*)\}(.*)", str(value))
    if not match:
        return str(value)
    kind, default, rest = match.groups()
    return None if "?" in kind else default + rest


def check_compose_safety(compose):
    problems = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published = default_of(port)
            if published is None or not published.startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port!r} is published beyond 127.0.0.1 by default")
        environment = service.get("environment", {})
        if "BETTER_AUTH_URL" in environment and default_of(environment["BETTER_AUTH_URL"]) is not None:
            problems.append(f"{name}: BETTER_AUTH_URL has a default; it must be given explicitly")
        if default_of(environment.get("JWKS_ALLOW_INSECURE_HTTP", "false")) != "false":
            problems.append(f"{name}: JWKS_ALLOW_INSECURE_HTTP must default to false")
    issuer = compose["services"].get("dev-issuer", {})
    if issuer.get("profiles") != ["dev"]:
        problems.append("dev-issuer: must run only under the `dev` profile")
    print("docker-compose.yml: safe defaults checked")
    return problems


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
    deployments, selected = set(), set()
    for path in sorted((ROOT / "deploy/kubernetes/base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc.get("kind") == "Deployment":
                deployments.add(doc["metadata"]["name"])
            elif doc.get("kind") == "NetworkPolicy":
                selector = doc["spec"]["podSelector"]
                selected.update(selector.get("matchLabels", {}).values())
                for expression in selector.get("matchExpressions", []):
                    selected.update(expression.get("values", []))
    for name in sorted(deployments - selected):
        problems.append(f"deploy/kubernetes/base: no NetworkPolicy selects {name}")
    print("deploy/kubernetes/base: settings and network policies checked")
    return problems


if __name__ == "__main__":
    main()

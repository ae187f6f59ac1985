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
5. deploy/cloudrun holds a Knative Service per binary in the shape Cloud Run
   needs: an h2c port, gRPC startup and liveness probes, containerConcurrency
   within MAX_CONCURRENT_CALLS, SHUTDOWN_GRACE inside the 10 s SIGTERM window,
   DATABASE_URL from a Secret Manager volume and the Cloud SQL annotation for
   the services, min-instances and startup CPU boost, https:// upstreams for
   the gateway; and every variable it sets is a setting of its binary.

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
    problems += check_cloudrun()
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


def seconds(duration):
    """`8s`, `500ms`, `1m` -> seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    if not match:
        raise ValueError(f"unreadable duration {duration!r}")
    value, unit = int(match.group(1)), match.group(2)
    return value / 1000 if unit == "ms" else value * (60 if unit == "m" else 1)


def check_cloudrun():
    problems = []
    every = {target: accepted(commands) for target, commands in TARGETS.items()}
    found = set()
    for path in sorted((ROOT / "deploy/cloudrun").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        where = f"deploy/cloudrun/{path.name}"

        def need(condition, what):
            if not condition:
                problems.append(f"{where}: {what}")

        need(doc.get("apiVersion") == "serving.knative.dev/v1", "apiVersion must be serving.knative.dev/v1")
        need(doc.get("kind") == "Service", "kind must be Service")
        template = doc["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        spec = template["spec"]
        (container,) = spec["containers"]
        name = container["name"]
        found.add(name)
        need(name in every, f"container {name} is not a Casebook binary")
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        for variable in env:
            need(variable in every.get(name, set()), f"{variable} is not a setting of {name}")
        (port,) = container["ports"]
        need(port.get("name") == "h2c", "the port must be h2c (HTTP/2 end to end, which gRPC needs)")
        need(not any(v.endswith("_ADDR") for v in env), "no *_ADDR: the service listens on Cloud Run's PORT")
        for probe in ("startupProbe", "livenessProbe"):
            need("grpc" in container.get(probe, {}), f"{probe} must be a gRPC probe")
        concurrency = spec.get("containerConcurrency")
        need(concurrency is not None, "containerConcurrency must be set")
        if concurrency is not None:
            need(int(env.get("MAX_CONCURRENT_CALLS") or 1024) >= concurrency,
                 "containerConcurrency above MAX_CONCURRENT_CALLS: the process would refuse what Cloud Run admits")
        need(seconds(env.get("SHUTDOWN_GRACE") or "10s") < 10,
             "SHUTDOWN_GRACE must end inside Cloud Run's 10 s between SIGTERM and SIGKILL")
        need(int(annotations.get("autoscaling.knative.dev/minScale", "0")) >= 1, "min-instances (minScale) >= 1")
        need(annotations.get("run.googleapis.com/startup-cpu-boost") == "true", "startup CPU boost on")
        if name in ("auth-svc", "case-svc"):
            need("run.googleapis.com/cloudsql-instances" in annotations, "the Cloud SQL annotation")
            need("DATABASE_URL" not in env, "DATABASE_URL must come from a secret, not a literal")
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            secret_file = env.get("DATABASE_URL_FILE") or ""
            volume = next((volumes.get(n) for mount, n in mounts.items() if secret_file.startswith(mount + "/")), None)
            need(volume is not None and "secret" in volume, "DATABASE_URL_FILE must point into a secret volume")
        if name == "gateway":
            for upstream in ("AUTH_SVC_URL", "CASE_SVC_URL"):
                need((env.get(upstream) or "").startswith("https://"), f"{upstream} must be an https:// run.app URL")
    for missing in sorted({"auth-svc", "case-svc", "gateway"} - found):
        problems.append(f"deploy/cloudrun: no manifest for {missing}")
    print("deploy/cloudrun: Knative shape and settings checked")
    return problems


if __name__ == "__main__":
    main()

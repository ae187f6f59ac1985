"""Static checks of docker-compose.yml, for machines without a Docker engine.

1. The file validates against the Compose specification's JSON schema
   (tests/data/compose-spec/compose-spec.json).
2. Every environment variable it sets on a Casebook service is one that the
   service's binary accepts (read from the binary's own --help), so the file
   cannot drift from the code.

Usage: python3 tests/deploy/check_compose.py [target/debug]
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
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"docker-compose.yml: all {checked} environment settings are accepted by their binaries")


if __name__ == "__main__":
    main()

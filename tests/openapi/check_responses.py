"""Every REST response the Rust tests received conforms to docs/openapi.json.

tests/rest.rs records each exchange (verb, path, query, status, content type,
body) under target/tmp/rest-exchanges/; this validates every response, errors
included, against the committed OpenAPI document with openapi-core, an
implementation independent of ours. The document itself is validated first
with openapi-spec-validator.

Usage: python3 tests/openapi/check_responses.py [target/tmp/rest-exchanges]
"""

import json
import pathlib
import sys

from openapi_core import OpenAPI
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXCHANGES = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target/tmp/rest-exchanges"


def undocumented_route(exchange):
    """What is wrong with the answer to a path or verb no route has."""
    if exchange["status"] not in (404, 405):
        yield "an undocumented route must answer 404 or 405"
        return
    error = json.loads(exchange["body"]).get("error", {})
    if error.get("code") != exchange["status"] or not isinstance(error.get("status"), str):
        yield f"not Google's JSON error shape: {exchange['body']}"


def main():
    document = json.loads((ROOT / "docs/openapi.json").read_text())
    validate(document)
    print("docs/openapi.json: a valid OpenAPI 3.1 document")
    openapi = OpenAPI.from_dict(document)
    files = sorted(EXCHANGES.glob("*.json"))
    if not files:
        sys.exit(f"no recorded exchanges under {EXCHANGES}: run `cargo test --test rest` first")
    problems, checked = [], 0
    for path in files:
        for exchange in json.loads(path.read_text()):
            request = MockRequest(
                "http://127.0.0.1", exchange["method"], exchange["path"],
                args=dict(pair.split("=", 1) if "=" in pair else (pair, "")
                          for pair in exchange["query"].split("&") if pair),
            )
            content_type = exchange["content_type"].split(";")[0] or "application/json"
            body = exchange["body"].encode()
            response = MockResponse(body, status_code=exchange["status"], content_type=content_type)
            if exchange["status"] == 304:
                response = MockResponse(b"", status_code=304, content_type=None)
            checked += 1
            where = f"{path.stem}: {exchange['method'].upper()} {exchange['path']} → {exchange['status']}"
            try:
                openapi.validate_response(request, response)
            except (PathNotFound, OperationNotFound):
                # Routes the document does not have answer 404/405 in the
                # same error shape; check that shape by hand.
                problems.extend(f"{where}: {why}" for why in undocumented_route(exchange))
            except Exception as error:  # openapi-core raises one type per failure kind
                detail = getattr(error, "__cause__", None) or error
                problems.append(f"{where}: {detail}")
    print(f"{checked} recorded responses checked against docs/openapi.json")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print("every response conforms")


if __name__ == "__main__":
    main()

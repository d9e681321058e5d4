#!/usr/bin/env python3
"""Extracts, from the services' own API descriptions, what port-runner's tests check requests
against: for each operation the runner uses, its method, path template, query parameters and
request-body schema (every `$ref` inlined, so each schema stands alone).

    python3 tests/contract/extract.py PORT_OPENAPI BITBUCKET_OPENAPI

PORT_OPENAPI is Port's published OpenAPI description (port-labs/port-docs, `static/apispec.yaml`,
as JSON, or as YAML when PyYAML is installed); BITBUCKET_OPENAPI is Atlassian's for Bitbucket
Data Center 9.2 (its `swagger.v3.json`). It writes tests/contract/port.json and
tests/contract/bitbucket.json, each naming the file it was made from and its SHA-256. The tests
read only those two extracts, which are committed: run this again when a description changes.
The list of operations below is the runner's: a request to anything else is a violation.
"""
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

PORT_OPERATIONS = [
    ("POST", "/v1/auth/access_token"),
    ("PATCH", "/v1/actions/runs/{run_id}"),
    ("GET", "/v1/actions/runs"),
    ("POST", "/v1/actions/runs/{run_id}/logs"),
    ("GET", "/v1/actions/runs/{run_id}/logs"),
    ("POST", "/v1/blueprints/{blueprint_identifier}/entities"),
    ("POST", "/v1/blueprints/{blueprint_identifier}/entities/bulk"),
    ("PATCH", "/v1/blueprints/{blueprint_identifier}/entities/{entity_identifier}"),
    ("DELETE", "/v1/blueprints/{blueprint_identifier}/entities/{entity_identifier}"),
    ("POST", "/v1/entities/search"),
    ("GET", "/v1/blueprints/{identifier}"),
    ("POST", "/v1/blueprints"),
    ("PUT", "/v1/blueprints/{identifier}"),
    ("GET", "/v1/actions/{action_identifier}"),
    ("POST", "/v1/actions"),
    ("PUT", "/v1/actions/{action_identifier}"),
    ("GET", "/v1/organization"),
    ("PATCH", "/v1/organization"),
]

# Port's agent protocol is not in its public description: these routes are
# checked against what port-labs/port-agent and port-labs/ocean send, written here by hand.
PORT_UNDESCRIBED = [
    {"method": "POST", "path": "/v1/actions/runs/claim-pending", "query": [],
     "body": {"type": "object", "required": ["installationId", "limit", "invocationMethod"],
              "properties": {"installationId": {"type": "string"},
                             "limit": {"type": "integer", "minimum": 1},
                             "invocationMethod": {"enum": ["WEBHOOK", "GITLAB", "GITHUB"]},
                             "visibilityTimeoutMs": {"type": "integer", "minimum": 1,
                                                     "maximum": 600000}},
              "additionalProperties": False},
     "source": "port-labs/port-agent app/port_client.py; port-labs/ocean"},
    {"method": "PATCH", "path": "/v1/actions/runs/ack", "query": [],
     "body": {"type": "object", "required": ["runIds"],
              "properties": {"runIds": {"type": "array", "items": {"type": "string"},
                                        "minItems": 1}},
              "additionalProperties": False},
     "source": "port-labs/port-agent app/port_client.py; port-labs/ocean"},
    # Workflow node runs (docs/port-protocol.md, "Workflow node runs").
    {"method": "POST", "path": "/v1/workflows/runs/claim-pending", "query": [],
     "body": {"type": "object", "required": ["installationId", "limit"],
              "properties": {"installationId": {"type": "string"},
                             "limit": {"type": "integer", "minimum": 1},
                             "visibilityTimeoutMs": {"type": "integer", "minimum": 1,
                                                     "maximum": 600000},
                             "exclude": {"type": "array", "items": {"type": "string"}}},
              "additionalProperties": False},
     "source": "port-labs/port-agent app/port_client.py (claim_pending_wf_node_runs); port-labs/ocean workflow_nodes.py"},
    {"method": "PATCH", "path": "/v1/workflows/runs/ack", "query": [],
     "body": {"type": "object", "required": ["nodeRunIdentifier"],
              "properties": {"nodeRunIdentifier": {"type": "string"}},
              "additionalProperties": False},
     "source": "port-labs/port-agent app/port_client.py (ack_wf_node_run)"},
    {"method": "PATCH", "path": "/v1/workflows/nodes/runs/{node_run_identifier}", "query": [],
     "body": {"type": "object", "required": ["status"],
              "properties": {"status": {"enum": ["IN_PROGRESS", "COMPLETED"]},
                             "result": {"enum": ["SUCCESS", "FAILED", "CANCELLED"]},
                             "output": {"type": "object"},
                             "externalRunId": {"type": "string"},
                             "links": {"type": "array", "items": {"type": "string"}}},
              "additionalProperties": False},
     "source": "port-labs/port-agent app/port_client.py (report_wf_node_run_status); port-labs/ocean workflow_nodes.py"},
    {"method": "POST", "path": "/v1/workflows/nodes/runs/{node_run_identifier}/logs", "query": [],
     "body": {"type": "object", "required": ["logs"],
              "properties": {"logs": {"type": "array", "minItems": 1, "items": {
                  "type": "object", "required": ["level", "message"],
                  "properties": {"level": {"enum": ["INFO", "WARN", "ERROR", "DEBUG"]},
                                 "message": {"type": "string"}},
                  "additionalProperties": False}}},
              "additionalProperties": False},
     "source": "port-labs/port-agent app/port_client.py (wf_node_run_logger_factory)"},
]

BITBUCKET_OPERATIONS = [
    ("GET", "/api/latest/projects"),
    ("GET", "/api/latest/projects/{projectKey}"),
    ("GET", "/api/latest/projects/{projectKey}/repos"),
    ("GET", "/api/latest/projects/{projectKey}/repos/{repositorySlug}/commits"),
    ("GET", "/api/latest/projects/{projectKey}/repos/{repositorySlug}/branches/default"),
    ("GET", "/api/latest/projects/{projectKey}/repos/{repositorySlug}/files"),
    ("GET", "/api/latest/projects/{projectKey}/repos/{repositorySlug}/raw/{path}"),
    ("GET", "/api/latest/projects/{projectKey}/repos/{repositorySlug}/browse/{path}"),
    ("GET", "/api/latest/build/capabilities"),
    ("POST", "/api/latest/projects/{projectKey}/repos/{repositorySlug}/commits/{commitId}/builds"),
    ("POST", "/build-status/latest/commits/{commitId}"),
    ("PUT", "/insights/latest/projects/{projectKey}/repos/{repositorySlug}/commits/{commitId}/reports/{key}"),
    ("DELETE", "/insights/latest/projects/{projectKey}/repos/{repositorySlug}/commits/{commitId}/reports/{key}/annotations"),
    ("POST", "/insights/latest/projects/{projectKey}/repos/{repositorySlug}/commits/{commitId}/reports/{key}/annotations"),
]

# How a description's paths appear on the wire.
PORT_PREFIXES = {"/v1/": ["/v1/"]}
BITBUCKET_PREFIXES = {
    "/api/latest/": ["/rest/api/1.0/", "/rest/api/latest/"],
    "/insights/latest/": ["/rest/insights/1.0/", "/rest/insights/latest/"],
    "/build-status/latest/": ["/rest/build-status/1.0/", "/rest/build-status/latest/"],
}


# Where a description is wrong about what its server takes, the correction and its reason. The
# contract test prints them; keep them few and sourced.
CORRECTIONS = {
    "bitbucket.json": [
        {"method": "PUT", "path": "/insights/latest/projects/{projectKey}/repos/{repositorySlug}/commits/{commitId}/reports/{key}",
         "pointer": "/body/properties/data/items/properties/value",
         "schema": {"type": ["boolean", "integer", "number", "string", "object"]},
         "why": "the schema says `value` is an object (its example is 9); the operation's own "
                "description table gives its type by `type`: a number for NUMBER, text for "
                "TEXT, {linktext, href} for LINK"},
        {"method": "GET", "path": "/api/latest/projects/{projectKey}/repos/{repositorySlug}/browse/{path}",
         "query": [{"name": "start", "required": False, "schema": {"type": "integer", "minimum": 0}},
                   {"name": "limit", "required": False, "schema": {"type": "integer", "minimum": 1}}],
         "why": "a file's lines come in pages (`isLastPage`, `nextPageStart`, as every paged "
                "resource: Atlassian's paging docs); the parameters are not listed"},
    ],
    "port.json": [],
}


def correct(name, data):
    for fix in CORRECTIONS[name]:
        op = next(o for o in data["operations"]
                  if o["method"] == fix["method"] and o["path"] == fix["path"])
        if "pointer" in fix:
            parts = fix["pointer"].strip("/").split("/")
            node = op
            for part in parts[:-1]:
                node = node[part]
            node[parts[-1]] = fix["schema"]
        for param in fix.get("query", []):
            op["query"].append(param)
        data.setdefault("corrections", []).append(
            {"method": fix["method"], "path": fix["path"], "why": fix["why"]})


def inline(node, spec, seen=()):
    """`node` with every local `$ref` replaced by what it names (a cycle becomes `{}`)."""
    if isinstance(node, list):
        return [inline(n, spec, seen) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/") or ref in seen:
            return {}
        target = spec
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        rest = {k: v for k, v in node.items() if k != "$ref"}
        resolved = inline(target, spec, seen + (ref,))
        return {**resolved, **inline(rest, spec, seen)} if rest else resolved
    # OpenAPI-only words a JSON Schema validator does not know are harmless; `example`s are
    # dropped to keep the extract small.
    return {k: inline(v, spec, seen) for k, v in node.items() if k not in ("example", "examples")}


def operation(spec, method, path):
    item = spec["paths"][path]
    op = item[method.lower()]
    params = [inline(p, spec) for p in item.get("parameters", []) + op.get("parameters", [])]
    query = [{"name": p["name"], "required": bool(p.get("required")),
              "schema": p.get("schema", {})} for p in params if p.get("in") == "query"]
    body = None
    required = False
    if "requestBody" in op:
        request = inline(op["requestBody"], spec)
        required = bool(request.get("required"))
        content = request.get("content", {})
        for kind in ("application/json", "*/*"):
            if kind in content:
                body = content[kind].get("schema", {})
                break
    return {"method": method, "path": path, "deprecated": bool(op.get("deprecated")),
            "query": query, "body": body, "bodyRequired": required}


def load(path):
    """The description at `path`: JSON, or YAML when PyYAML is there."""
    try:
        raw = open(path, "rb").read()
    except OSError as e:
        sys.exit(f"extract.py: cannot read {path}: {e.strerror}")
    try:
        return json.loads(raw), raw
    except ValueError:
        pass
    try:
        import yaml
    except ImportError:
        sys.exit(f"extract.py: {path} is not JSON (for YAML, pip install pyyaml)")
    return yaml.safe_load(raw), raw


def extract(spec_file, operations, prefixes, title, undescribed=()):
    spec, raw = load(spec_file)
    info = spec.get("info", {})
    return {
        "generatedBy": "tests/contract/extract.py",
        "description": f"{title} ({os.path.basename(spec_file)}, "
                       f"{info.get('title', '')} {info.get('version', '')})".strip(),
        "sourceSha256": hashlib.sha256(raw).hexdigest(),
        "prefixes": prefixes,
        "operations": [operation(spec, m, p) for m, p in operations],
        "undescribed": list(undescribed),
    }


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n", 1)[1].split('"""')[0].rstrip())
    port_file, bitbucket_file = sys.argv[1:]
    out = {
        "port.json": extract(port_file, PORT_OPERATIONS, PORT_PREFIXES, "Port API",
                             PORT_UNDESCRIBED),
        "bitbucket.json": extract(bitbucket_file, BITBUCKET_OPERATIONS, BITBUCKET_PREFIXES,
                                  "Bitbucket Data Center 9.2"),
    }
    for name, data in out.items():
        correct(name, data)
        # One line per operation: compact, and a changed operation is one changed line.
        ops = data.pop("operations")
        head = json.dumps(data, sort_keys=True)[:-1]
        lines = ",\n".join(json.dumps(op, sort_keys=True, separators=(",", ":")) for op in ops)
        with open(os.path.join(HERE, name), "w") as f:
            f.write(f'{head}, "operations": [\n{lines}\n]}}\n')
        print(f"{name}: {len(ops)} operations")


if __name__ == "__main__":
    main()

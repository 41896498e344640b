#!/usr/bin/env python3
"""Checks infra/aws/template.yaml against the workspace and the system's contracts.

    check_template.py TEMPLATE CARGO_METADATA_JSON

- every AWS::Serverless::Function is built with rust-cargolambda for arm64 / provided.al2023,
  with Handler `bootstrap`, from a CodeUri that is the workspace root, and its
  BuildProperties.Binary is a binary of the workspace (`cargo metadata --no-deps`);
- every function binary of the workspace (packages fn-*) is deployed exactly once, and no function
  crate depends on another (dev-dependencies aside);
- each consumed CloudEvent type has an EventBridge rule to the right binary, with a retry policy
  and a dead-letter queue, and the function's async invocation failures go to a queue too;
- the agent sweep is scheduled every minute with a valid `messaging.agent.sweep` CloudEvent;
- the WebSocket API selects routes on `$request.body.type` and has exactly the expected routes
  (the reserved ones and one per client frame of docs/contract/asyncapi.json), each integrated
  with the expected function;
- the schema migration is a custom resource backed by the migrate binary, at the workspace's
  SCHEMA_VERSION, and every function that reads MongoDB depends on it;
- secrets are dynamic references, never literal values.

Run by scripts/validate-infra with the python of .tools/venv-infra (it uses cfn-lint's YAML
decoder, which understands the short intrinsic-function tags).
"""

import json
import os
import re
import sys

from cfnlint.decode import decode

EVENT_ROUTES = {
    "messaging.message.received": "store",
    "agent.response": "agent-response",
    "agent.progress": "agent-response",
    "agent.delta": "agent-response",
    "messaging.notification": "push",
}
CONTRACT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "docs", "contract", "asyncapi.json")


def websocket_routes():
    """The routes the template must have: the reserved ones, and one per client frame of the
    published AsyncAPI document (a frame added to the protocol without its route fails here)."""
    with open(CONTRACT, encoding="utf-8") as f:
        schemas = json.load(f)["components"]["schemas"]
    frames = {name[len("client_"):] for name in schemas if name.startswith("client_")}
    return {"$connect": "connect", "$disconnect": "disconnect", "$default": "message",
            **{frame: "message" for frame in sorted(frames)}}


WEBSOCKET_ROUTES = websocket_routes()
SECRET_VARIABLES = ("REDIS_URL", "MONGODB_URI", "JWT_HS256_SECRET")

failures = []
checks = 0


def check(condition, message):
    global checks
    checks += 1
    if not condition:
        failures.append(message)


def logical_id_of(value):
    """The logical id an intrinsic refers to (Ref, GetAtt, or a Sub naming ${Id.Arn})."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return target[0] if isinstance(target, list) else target.split(".")[0]
        if "Fn::Sub" in value:
            text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
            start = text.find("/functions/${")
            if start >= 0:
                return text[start + len("/functions/${"):].split("}")[0].split(".")[0]
    return None


def main(template_path, metadata_path):
    template, matches = decode(template_path)
    if matches:
        for m in matches:
            print(f"  cannot parse {template_path}: {m}")
        return 1
    with open(metadata_path) as f:
        metadata = json.load(f)
    workspace_root = os.path.realpath(metadata["workspace_root"])
    binaries = {}
    for package in metadata["packages"]:
        for target in package["targets"]:
            if "bin" in target["kind"]:
                binaries[target["name"]] = package["name"]
    function_binaries = {b for b, p in binaries.items() if p.startswith("fn-")}
    # Each function is deployed alone: none builds on another's crate (tests may).
    for package in metadata["packages"]:
        if package["name"].startswith("fn-"):
            for dependency in package["dependencies"]:
                check(
                    not (dependency["name"].startswith("fn-") and dependency.get("kind") in (None, "normal", "build")),
                    f"function crate {package['name']} depends on function crate {dependency['name']}",
                )

    globals_ = template.get("Globals", {}).get("Function", {})
    resources = template["Resources"]
    functions = {k: v for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}
    binary_of = {}
    template_dir = os.path.dirname(os.path.realpath(template_path))
    for name, fn in functions.items():
        props = fn.get("Properties", {})
        meta = fn.get("Metadata", {})
        eff = lambda key: props.get(key, globals_.get(key))  # noqa: E731
        check(meta.get("BuildMethod") == "rust-cargolambda", f"{name}: BuildMethod is not rust-cargolambda")
        binary = meta.get("BuildProperties", {}).get("Binary")
        check(binary in binaries, f"{name}: binary {binary!r} is not a binary of the workspace")
        binary_of[name] = binary
        check(eff("Handler") == "bootstrap", f"{name}: Handler must be bootstrap (cargo-lambda's output)")
        check(eff("Runtime") == "provided.al2023", f"{name}: Runtime must be provided.al2023")
        check(eff("Architectures") == ["arm64"], f"{name}: Architectures must be [arm64]")
        code_uri = eff("CodeUri")
        resolved = os.path.realpath(os.path.join(template_dir, code_uri)) if isinstance(code_uri, str) else None
        check(resolved == workspace_root, f"{name}: CodeUri {code_uri!r} is not the workspace root {workspace_root}")
        env = dict(globals_.get("Environment", {}).get("Variables", {}))
        env.update(props.get("Environment", {}).get("Variables", {}))
        for var in SECRET_VARIABLES:
            if var in env:
                text = json.dumps(env[var])
                check("{{resolve:" in text, f"{name}: {var} must be a dynamic reference, not a value")
    deployed = sorted(binary_of.values())
    for b in sorted(function_binaries):
        check(deployed.count(b) == 1, f"binary {b} is deployed {deployed.count(b)} times (expected once)")

    # The schema migration: a custom resource backed by the migrate binary, at this build's
    # SCHEMA_VERSION, and every function that reads MongoDB waits for it.
    migrations = {k: v for k, v in resources.items() if v["Type"] == "Custom::SchemaMigration"}
    check(len(migrations) == 1, f"expected one Custom::SchemaMigration resource, found {len(migrations)}")
    schema_rs = os.path.join(workspace_root, "lib", "src", "store", "schema.rs")
    with open(schema_rs, encoding="utf-8") as f:
        expected_version = int(re.search(r"pub const SCHEMA_VERSION: i64 = (\d+);", f.read()).group(1))
    for name, migration in migrations.items():
        props = migration.get("Properties", {})
        check(binary_of.get(logical_id_of(props.get("ServiceToken"))) == "migrate",
              f"{name} is not backed by the migrate function")
        check(str(props.get("SchemaVersion")) == str(expected_version),
              f"{name}.SchemaVersion is {props.get('SchemaVersion')}, SCHEMA_VERSION is {expected_version}")
        for function, binary in binary_of.items():
            if binary in ("migrate", "authorizer"):
                continue
            depends = functions[function].get("DependsOn", [])
            depends = [depends] if isinstance(depends, str) else depends
            check(name in depends, f"{function} does not depend on {name} (it would start before the migration)")
    fn_by_binary = {b: n for n, b in binary_of.items()}

    # Event routing.
    for event_type, binary in EVENT_ROUTES.items():
        fn_name = fn_by_binary.get(binary)
        fn = functions.get(fn_name, {})
        rules = [
            e["Properties"]
            for e in fn.get("Properties", {}).get("Events", {}).values()
            if e["Type"] == "EventBridgeRule" and event_type in e["Properties"].get("Pattern", {}).get("detail-type", [])
        ]
        check(len(rules) == 1, f"{event_type}: expected one EventBridge rule to {binary}, found {len(rules)}")
        for rule in rules:
            check("RetryPolicy" in rule, f"{event_type}: rule without RetryPolicy")
            check("Arn" in rule.get("DeadLetterConfig", {}), f"{event_type}: rule without a dead-letter queue")
            check(rule.get("EventBusName") is not None, f"{event_type}: rule on the default bus")
        on_failure = fn.get("Properties", {}).get("EventInvokeConfig", {}).get("DestinationConfig", {}).get("OnFailure", {})
        check(on_failure.get("Type") == "SQS", f"{binary}: failed invocations must go to an SQS queue")

    # The sweeps: silent agents (agent-response), the outbox and connections nearing API
    # Gateway's 2-hour limit (store).
    for binary, sweep_types in (
        ("agent-response", ["messaging.agent.sweep"]),
        ("store", ["messaging.outbox.sweep", "messaging.connections.sweep"]),
    ):
        sweeps = [
            e["Properties"]
            for e in functions.get(fn_by_binary.get(binary), {}).get("Properties", {}).get("Events", {}).values()
            if e["Type"] in ("ScheduleV2", "Schedule")
        ]
        scheduled = sorted(json.loads(s.get("Input", "{}") or "{}").get("type", "") for s in sweeps)
        check(scheduled == sorted(sweep_types), f"{binary}: expected one schedule for each of {sweep_types}, found {scheduled}")
        for sweep in sweeps:
            sweep_type = json.loads(sweep.get("Input", "{}") or "{}").get("type", "?")
            check(sweep.get("ScheduleExpression") == "rate(1 minute)", f"{sweep_type}: not every minute")
            try:
                event = json.loads(sweep.get("Input", ""))
            except ValueError as e:
                event = {}
                check(False, f"{sweep_type}: Input is not JSON: {e}")
            check(event.get("type") in sweep_types, f"{binary}'s schedule is not a {sweep_types} CloudEvent")
            check(event.get("specversion") == "1.0" and event.get("id") and event.get("source"), f"{sweep_type}: Input lacks CloudEvent attributes")

    # The $connect authorizer: the authorizer binary, with an invoke permission for API Gateway.
    authorizers = {k: v for k, v in resources.items() if v["Type"] == "AWS::ApiGatewayV2::Authorizer"}
    check(len(authorizers) == 1, f"expected one WebSocket authorizer, found {len(authorizers)}")
    for auth_id, auth in authorizers.items():
        props = auth["Properties"]
        check(props.get("AuthorizerType") == "REQUEST", "authorizer: must be a REQUEST authorizer")
        check(binary_of.get(logical_id_of(props.get("AuthorizerUri"))) == "authorizer", "authorizer: AuthorizerUri must invoke the authorizer binary")
        connect = [v for v in resources.values() if v["Type"] == "AWS::ApiGatewayV2::Route" and v["Properties"].get("RouteKey") == "$connect"]
        check(
            len(connect) == 1
            and connect[0]["Properties"].get("AuthorizationType") == "CUSTOM"
            and logical_id_of(connect[0]["Properties"].get("AuthorizerId")) == auth_id,
            "$connect must use the authorizer (AuthorizationType CUSTOM)",
        )
        permissions = [
            v for v in resources.values()
            if v["Type"] == "AWS::Lambda::Permission"
            and binary_of.get(logical_id_of(v["Properties"].get("FunctionName"))) == "authorizer"
        ]
        check(
            any("/authorizers/" in json.dumps(p["Properties"].get("SourceArn")) for p in permissions),
            "authorizer: API Gateway needs a lambda:InvokeFunction permission scoped to /authorizers/",
        )

    # The agent rule filters on the agentid extension.
    agent_rules = [r for r in resources.values() if r["Type"] == "AWS::Events::Rule"]
    check(
        any("agentid" in r["Properties"].get("EventPattern", {}).get("detail", {}) for r in agent_rules),
        "no EventBridge rule filters agents on detail.agentid",
    )

    # The WebSocket API.
    apis = {k: v for k, v in resources.items() if v["Type"] == "AWS::ApiGatewayV2::Api" and v["Properties"].get("ProtocolType") == "WEBSOCKET"}
    check(len(apis) == 1, f"expected one WebSocket API, found {len(apis)}")
    for api_id, api in apis.items():
        check(api["Properties"].get("RouteSelectionExpression") == "$request.body.type", "WebSocket API: route selection must be $request.body.type")
        integrations = {
            k: logical_id_of(v["Properties"].get("IntegrationUri"))
            for k, v in resources.items()
            if v["Type"] == "AWS::ApiGatewayV2::Integration" and logical_id_of(v["Properties"].get("ApiId")) == api_id
        }
        routes = {}
        for k, v in resources.items():
            if v["Type"] == "AWS::ApiGatewayV2::Route" and logical_id_of(v["Properties"].get("ApiId")) == api_id:
                target = v["Properties"].get("Target", {})
                text = target.get("Fn::Sub", "") if isinstance(target, dict) else str(target)
                integration = text.replace("integrations/${", "").rstrip("}")
                routes[v["Properties"]["RouteKey"]] = binary_of.get(integrations.get(integration))
        check(routes == WEBSOCKET_ROUTES, f"WebSocket routes differ: {routes} != {WEBSOCKET_ROUTES}")
        # The message function answers in its response body (message_ack, heartbeat_ack, errors):
        # every route to it must be two-way, or clients would never see those answers.
        answered = {
            logical_id_of(v["Properties"].get("RouteId"))
            for v in resources.values()
            if v["Type"] == "AWS::ApiGatewayV2::RouteResponse" and v["Properties"].get("RouteResponseKey") == "$default"
        }
        for k, v in resources.items():
            props = v["Properties"]
            if v["Type"] == "AWS::ApiGatewayV2::Route" and WEBSOCKET_ROUTES.get(props.get("RouteKey")) == "message":
                check(
                    props.get("RouteResponseSelectionExpression") == "$default" and k in answered,
                    f"{k}: a route to the message function must be two-way (RouteResponseSelectionExpression $default and a $default RouteResponse)",
                )
        stages = [v for v in resources.values() if v["Type"] == "AWS::ApiGatewayV2::Stage" and logical_id_of(v["Properties"].get("ApiId")) == api_id]
        check(
            len(stages) == 1 and "ThrottlingRateLimit" in stages[0]["Properties"].get("DefaultRouteSettings", {}),
            "WebSocket stage without throttling",
        )

    print(f"  {checks} checks on {len(functions)} functions ({', '.join(sorted(deployed))}) against the workspace at {workspace_root}")
    for failure in failures:
        print(f"  FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

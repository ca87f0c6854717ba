//! The AWS-compatible endpoints driven by the real AWS CLI and boto3 (PyPI, in the virtualenv
//! scripts/test makes): API Gateway's canary guide step by step against a real split, the refusals with
//! AWS's messages, CloudWatch alarms in all three of its protocols (the CLI's CBOR, JSON 1.0 and query,
//! the last two as raw requests signed by botocore's signer), and Signature Version 4 refusals (wrong
//! secret, unknown key, a request 20 minutes old, a read key writing) that change nothing.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "AKIAPIPELINE0001";
const ADMIN_SECRET: &str = "pipeline-secret-0123456789";
const READ_KEY: &str = "AKIAVIEWER000001";
const READ_SECRET: &str = "viewer-secret-0123456789";

fn venv() -> PathBuf {
    let dir = std::env::var_os("CANARYGATE_AWS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/canarygate/aws-venv"));
    assert!(
        dir.join("bin/aws").exists(),
        "no AWS CLI in {}: the test command (scripts/test) installs awscli and boto3 there",
        dir.display()
    );
    dir
}

/// Runs `aws ARGS` with only the environment a pipeline would set: keys, region and the endpoint.
fn aws(endpoint: &str, key: &str, secret: &str, args: &[&str]) -> (bool, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(venv().join("bin/aws"))
        .args(args)
        .args(["--output", "json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_API_GATEWAY", endpoint)
        .env("AWS_ENDPOINT_URL_CLOUDWATCH", endpoint)
        .env("AWS_ENDPOINT_URL_CODEDEPLOY", endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .expect("run aws");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn aws_ok(endpoint: &str, args: &[&str]) -> Value {
    let (ok, out, err) = aws(endpoint, ADMIN_KEY, ADMIN_SECRET, args);
    assert!(ok, "aws {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("aws {args:?}: {e}: {out}"))
}

/// `update-stage` of orders/prod with these patch operations (shorthand or JSON).
fn update_stage(endpoint: &str, ops: &str) -> Value {
    aws_ok(
        endpoint,
        &[
            "apigateway",
            "update-stage",
            "--rest-api-id",
            "orders",
            "--stage-name",
            "prod",
            "--patch-operations",
            ops,
        ],
    )
}

fn get_stage(endpoint: &str) -> Value {
    aws_ok(
        endpoint,
        &["apigateway", "get-stage", "--rest-api-id", "orders", "--stage-name", "prod"],
    )
}

fn aws_err(endpoint: &str, key: &str, secret: &str, args: &[&str]) -> String {
    let (ok, out, err) = aws(endpoint, key, secret, args);
    assert!(!ok, "aws {args:?} should have been refused: {out}");
    err
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("viewer.key");
    std::fs::write(&secret_file, format!("{READ_SECRET}\n")).unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  awsListen: 127.0.0.1:0\n  awsRegion: us-east-1\n  awsCredentials:\n    - {{name: pipeline, accessKeyId: {ADMIN_KEY}, secretAccessKeyEnv: PIPELINE_SECRET, role: admin}}\n    - {{name: viewer, accessKeyId: {READ_KEY}, secretAccessKeyFile: {}, role: read}}\n",
            secret_file.display()
        ),
    )
    .unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
        &[("PIPELINE_SECRET", ADMIN_SECRET)],
    );
    assert!(s.aws.is_some(), "the AWS listener did not start");
    (dir, s)
}

/// Within 4 binomial standard deviations of n·p.
fn within_4_sigma(k: usize, n: usize, p: f64) {
    let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
    assert!(
        (k as f64 - mean).abs() <= 4.0 * sd,
        "{k} of {n} on the canary, expected {mean} ± {}",
        4.0 * sd
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_gateway_canary_guide_runs_unchanged_with_the_aws_cli() {
    let (_dir, s) = start();
    let ep = s.aws.clone().unwrap();
    let c = client();
    let (prod, canary) = (
        Backend::start("production", Behaviour::Echo).await,
        Backend::start("canary", Behaviour::Echo).await,
    );
    // The API itself is canarygate's (routes are not API Gateway resources here).
    let routes = json!({"routes": [
        {"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}},
        {"method": "GET", "path": "/version", "integration": {"type": "mock", "body": "${stageVariables.version}"}}]});
    ok(&c, &s, "PUT", "/v1/apis/orders", Some(routes)).await;

    // get-rest-apis: the API's name is its id.
    let apis = aws_ok(&ep, &["apigateway", "get-rest-apis"]);
    assert_eq!(apis["items"][0]["id"], "orders", "{apis}");
    assert_eq!(
        aws_ok(&ep, &["apigateway", "get-rest-api", "--rest-api-id", "orders"])["name"],
        "orders"
    );

    // A first deployment creates the stage with its variables.
    let prod_addr = prod.addr.to_string();
    let d1 = aws_ok(
        &ep,
        &[
            "apigateway",
            "create-deployment",
            "--rest-api-id",
            "orders",
            "--stage-name",
            "prod",
            "--variables",
            &format!("backend={prod_addr},version=1"),
        ],
    );
    let d1 = d1["id"].as_str().unwrap().to_string();
    let st = get_stage(&ep);
    assert_eq!(st["deploymentId"], d1.as_str());
    assert_eq!(st["variables"], json!({"backend": prod_addr, "version": "1"}));
    assert!(st.get("canarySettings").is_none(), "{st}");

    // The canary: a new deployment with canary settings at 10%; the stage keeps its deployment.
    let canary_addr = canary.addr.to_string();
    let settings =
        format!("{{\"percentTraffic\": 10, \"useStageCache\": false, \"stageVariableOverrides\": {{\"backend\": \"{canary_addr}\"}}}}");
    let d2 = aws_ok(
        &ep,
        &[
            "apigateway",
            "create-deployment",
            "--rest-api-id",
            "orders",
            "--stage-name",
            "prod",
            "--canary-settings",
            &settings,
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let st = get_stage(&ep);
    assert_eq!(st["deploymentId"], d1.as_str());
    assert_eq!(
        st["canarySettings"],
        json!({"deploymentId": d2, "percentTraffic": 10.0, "stageVariableOverrides": {"backend": canary_addr}, "useStageCache": false})
    );
    assert_eq!(st["cacheClusterStatus"], "NOT_AVAILABLE");
    assert!(st["createdDate"].is_number() && st["lastUpdatedDate"].is_number(), "{st}");
    let url = format!("{}/orders/prod/items", s.gateway);
    within_4_sigma(count_canary(&c, &url, 1000, 8).await, 1000, 0.10);

    // update-stage to 50% (a string, as AWS takes it).
    let st = update_stage(&ep, "op=replace,path=/canarySettings/percentTraffic,value=50.000000");
    assert_eq!(st["canarySettings"]["percentTraffic"], 50.0);
    within_4_sigma(count_canary(&c, &url, 400, 8).await, 400, 0.50);
    // /v1 shows what the AWS call changed, and the other way round.
    let v1 = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert_eq!(v1["canarySettings"]["percentTraffic"], 50.0);
    set_percent(&c, &s, 20.0).await;
    let st = get_stage(&ep);
    assert_eq!(st["canarySettings"]["percentTraffic"], 20.0);

    // A stage variable overridden for the canary only.
    let st = update_stage(&ep, "op=replace,path=/canarySettings/stageVariableOverrides/version,value=2");
    assert_eq!(st["canarySettings"]["stageVariableOverrides"]["version"], "2");
    assert_eq!(st["variables"]["version"], "1");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let r = c.get(format!("{}/orders/prod/version", s.gateway)).send().await.unwrap();
        let variant = r.headers()["x-canarygate-variant"].to_str().unwrap().to_string();
        seen.insert((variant, r.text().await.unwrap()));
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [("canary".to_string(), "2".to_string()), ("production".to_string(), "1".to_string())]
    );

    // Three refusals, with API Gateway's messages, changing nothing.
    let before = get_stage(&ep);
    for (ops, message) in [
        (
            "op=add,path=/canarySettings/deploymentId,value=x",
            "An error occurred (BadRequestException) when calling the UpdateStage operation: Invalid add operation with path: /canarySettings/deploymentId",
        ),
        (
            "op=remove,path=/canarySettings/badPath",
            "An error occurred (BadRequestException) when calling the UpdateStage operation: Cannot remove method setting canarySettings/badPath because there is no method setting for this method",
        ),
        (
            "op=replace,path=/canarySettings/badPath,value=x",
            "An error occurred (BadRequestException) when calling the UpdateStage operation: Invalid method setting path: /canarySettings/badPath. Must be one of: [/deploymentId, /description, /cacheClusterEnabled,",
        ),
    ] {
        let err = aws_err(
            &ep,
            ADMIN_KEY,
            ADMIN_SECRET,
            &["apigateway", "update-stage", "--rest-api-id", "orders", "--stage-name", "prod", "--patch-operations", ops],
        );
        assert!(err.contains(message), "{ops}: {err}");
    }
    let err = aws_err(
        &ep,
        ADMIN_KEY,
        ADMIN_SECRET,
        &[
            "apigateway",
            "create-deployment",
            "--rest-api-id",
            "orders",
            "--stage-name",
            "nope",
            "--canary-settings",
            "percentTraffic=5",
        ],
    );
    assert!(
        err.contains("(BadRequestException) when calling the CreateDeployment operation: Invalid deployment content specified.Stage nope must already be created before making a canary release deployment"),
        "{err}"
    );
    let err = aws_err(
        &ep,
        ADMIN_KEY,
        ADMIN_SECRET,
        &["apigateway", "get-stage", "--rest-api-id", "orders", "--stage-name", "nope"],
    );
    assert!(
        err.contains("(NotFoundException) when calling the GetStage operation: Invalid Stage identifier specified"),
        "{err}"
    );
    assert_eq!(get_stage(&ep), before);
    let deployments = aws_ok(&ep, &["apigateway", "get-deployments", "--rest-api-id", "orders"]);
    assert_eq!(
        deployments["items"].as_array().unwrap().len(),
        2,
        "a refused call made no deployment: {deployments}"
    );
    assert_eq!(
        aws_ok(
            &ep,
            &["apigateway", "get-deployment", "--rest-api-id", "orders", "--deployment-id", &d2]
        )["id"],
        d2.as_str()
    );

    // Promotion as the guide does it: weight 0, then the two copies.
    let promote = r#"[{"op": "replace", "path": "/canarySettings/percentTraffic", "value": "0.0"},
        {"op": "copy", "from": "/canarySettings/deploymentId", "path": "/deploymentId"},
        {"op": "copy", "from": "/canarySettings/stageVariableOverrides", "path": "/variables"}]"#;
    let st = update_stage(&ep, promote);
    assert_eq!(st["deploymentId"], d2.as_str());
    assert_eq!(st["variables"], json!({"backend": canary_addr, "version": "2"}));
    assert_eq!(st["canarySettings"]["percentTraffic"], 0.0);
    // Then the canary goes.
    let st = update_stage(&ep, "op=remove,path=/canarySettings");
    assert!(st.get("canarySettings").is_none(), "{st}");
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["x-canarygate-variant"], "production");
    assert_eq!(
        r.json::<Value>().await.unwrap()["backend"],
        "canary",
        "the promoted deployment serves"
    );
    let v1 = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert_eq!(v1["deploymentId"], d2.as_str());
    assert!(v1["canarySettings"].is_null(), "{v1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked_and_a_refused_call_changes_nothing() {
    let (_dir, s) = start();
    let ep = s.aws.clone().unwrap();
    let c = client();
    ok(
        &c,
        &s,
        "PUT",
        "/v1/apis/orders",
        Some(json!({"routes": [{"path": "/", "integration": {"type": "mock", "body": "x"}}]})),
    )
    .await;
    let d = ok(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&c, &s, "PUT", "/v1/apis/orders/stages/prod", Some(json!({"deploymentId": d}))).await;
    let before = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    let update = [
        "apigateway",
        "update-stage",
        "--rest-api-id",
        "orders",
        "--stage-name",
        "prod",
        "--patch-operations",
        "op=replace,path=/canarySettings/percentTraffic,value=50",
    ];

    let err = aws_err(&ep, ADMIN_KEY, "not-the-secret-at-all", &update);
    assert!(
        err.contains("(InvalidSignatureException)") && err.contains("The request signature we calculated does not match"),
        "{err}"
    );
    let err = aws_err(&ep, "AKIAUNKNOWN00000", ADMIN_SECRET, &update);
    assert!(
        err.contains("(UnrecognizedClientException)") && err.contains("The security token included in the request is invalid."),
        "{err}"
    );
    let err = aws_err(&ep, READ_KEY, READ_SECRET, &update);
    assert!(
        err.contains("(AccessDeniedException)")
            && err.contains("User: arn:aws:iam::000000000000:user/viewer is not authorized to perform: apigateway:PATCH"),
        "{err}"
    );
    // A read key reads.
    let (ok_read, out, err) = aws(
        &ep,
        READ_KEY,
        READ_SECRET,
        &["apigateway", "get-stage", "--rest-api-id", "orders", "--stage-name", "prod"],
    );
    assert!(ok_read, "{err}");
    assert!(out.contains("\"deploymentId\""), "{out}");

    // A request signed 20 minutes ago (botocore's own signer, its clock moved back), and one not signed.
    let text = python(&format!(
        r#"
body = json.dumps({{"patchOperations": [{{"op": "replace", "path": "/canarySettings/percentTraffic", "value": "50"}}]}})
for signed in [True, False]:
    status, headers, answer = sign("PATCH", "apigateway", "{ep}/restapis/orders/stages/prod", body, {{"content-type": "application/json"}},
        minutes_ago=20, signed=signed)
    print(status, headers.get("x-amzn-errortype"), json.loads(answer)["message"])
"#
    ));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("403 InvalidSignatureException Signature expired: ") && lines[0].contains(" - 15 min.)"),
        "{text}"
    );
    assert_eq!(lines[1], "403 MissingAuthenticationTokenException Missing Authentication Token");

    // Nothing changed.
    assert_eq!(ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await, before);
}

#[test]
fn check_names_the_aws_setting_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, says) in [
        (
            "server:\n  awsListen: 127.0.0.1:0\n  awsCredentials:\n    - {name: p, accessKeyId: AKIA0001, secretAccessKeyEnv: CANARYGATE_TEST_NO_SUCH_VAR, role: admin}\n",
            "server.awsCredentials[0].secretAccessKeyEnv: the environment variable CANARYGATE_TEST_NO_SUCH_VAR is not set",
        ),
        ("server:\n  awsListen: 127.0.0.1:0\n", "server.awsListen 127.0.0.1:0: needs server.awsCredentials"),
        (
            "server:\n  awsListen: 127.0.0.1:0\n  awsCredentials:\n    - {name: p, accessKeyId: AKIA0001, role: admin}\n",
            "server.awsCredentials[0]: give exactly one of secretAccessKeyEnv and secretAccessKeyFile",
        ),
        (
            "server:\n  awsListen: 127.0.0.1:0\n  awsCredentials:\n    - {name: p, accessKeyId: AKIA0001, secretAccessKeyFile: /nonexistent, role: writer}\n",
            "role",
        ),
    ] {
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_canarygate"))
            .args(["check", "-f", f.to_str().unwrap()])
            .env_remove("CANARYGATE_TEST_NO_SUCH_VAR")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{yaml}: {text}");
        assert!(text.contains(says), "{yaml}: {text}");
    }
}

/// Runs a Python script with the virtualenv's botocore; `sign(method, service, url, body, headers,
/// minutes_ago=0, signed=True)` is defined for it (botocore's own SigV4 signer with the admin key, its
/// clock moved back `minutes_ago`) and returns (status, headers, body).
fn python(script: &str) -> String {
    let prelude = format!(
        r#"
import json, urllib.request, urllib.error
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
import datetime, botocore.auth
clock = botocore.auth.get_current_datetime
def sign(method, service, url, body, headers, minutes_ago=0, signed=True):
    req = AWSRequest(method=method, url=url, data=body, headers=headers)
    botocore.auth.get_current_datetime = lambda *a, **k: clock(*a, **k) - datetime.timedelta(minutes=minutes_ago)
    if signed:
        SigV4Auth(Credentials("{ADMIN_KEY}", "{ADMIN_SECRET}"), service, "us-east-1").add_auth(req)
    botocore.auth.get_current_datetime = clock
    p = req.prepare()
    r = urllib.request.Request(p.url, data=body.encode(), method=method, headers=dict(p.headers))
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()
"#
    );
    let out = Command::new(venv().join("bin/python"))
        .arg("-c")
        .arg(format!("{prelude}\n{script}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_alarms_in_cbor_json_and_query_are_canarygate_alarms() {
    let (_dir, s) = start();
    let ep = s.aws.clone().unwrap();
    let c = client();
    ok(
        &c,
        &s,
        "PUT",
        "/v1/apis/orders",
        Some(json!({"routes": [{"path": "/", "integration": {"type": "mock", "body": "x"}}]})),
    )
    .await;

    // The CLI as it is today (Smithy RPC v2 CBOR).
    let (done, _, err) = aws(
        &ep,
        ADMIN_KEY,
        ADMIN_SECRET,
        &[
            "cloudwatch",
            "put-metric-alarm",
            "--alarm-name",
            "canary-5xx",
            "--namespace",
            "AWS/ApiGateway",
            "--metric-name",
            "5XXError",
            "--dimensions",
            "Name=ApiName,Value=orders",
            "Name=Stage,Value=prod/Canary",
            "--statistic",
            "Average",
            "--period",
            "10",
            "--evaluation-periods",
            "3",
            "--datapoints-to-alarm",
            "2",
            "--threshold",
            "0.05",
            "--comparison-operator",
            "GreaterThanThreshold",
            "--treat-missing-data",
            "notBreaching",
        ],
    );
    assert!(done, "{err}");
    let v1 = ok(&c, &s, "GET", "/v1/alarms/canary-5xx", None).await;
    assert_eq!(
        (
            &v1["api"],
            &v1["stage"],
            &v1["variant"],
            &v1["metric"],
            &v1["statistic"],
            &v1["periodSeconds"],
            &v1["datapointsToAlarm"]
        ),
        (
            &json!("orders"),
            &json!("prod"),
            &json!("canary"),
            &json!("5XXError"),
            &json!("Average"),
            &json!(10),
            &json!(2)
        )
    );
    // One made through /v1 is described too.
    let alarm = json!({"api": "orders", "stage": "prod", "variant": "production", "metric": "Latency", "statistic": "p99",
        "periodSeconds": 60, "evaluationPeriods": 1, "datapointsToAlarm": 1, "comparison": "GreaterThanThreshold", "threshold": 500});
    ok(&c, &s, "PUT", "/v1/alarms/prod-latency", Some(alarm)).await;
    let d = aws_ok(&ep, &["cloudwatch", "describe-alarms"]);
    let alarms = d["MetricAlarms"].as_array().unwrap();
    assert_eq!(alarms.len(), 2, "{d}");
    let a = &alarms[0];
    assert_eq!(a["AlarmName"], "canary-5xx");
    assert_eq!(a["Namespace"], "AWS/ApiGateway");
    assert_eq!(
        a["Dimensions"],
        json!([{"Name": "ApiName", "Value": "orders"}, {"Name": "Stage", "Value": "prod/Canary"}])
    );
    assert_eq!(
        (&a["Statistic"], &a["Period"], &a["Threshold"]),
        (&json!("Average"), &json!(10), &json!(0.05))
    );
    assert!(
        ["OK", "ALARM", "INSUFFICIENT_DATA"].contains(&a["StateValue"].as_str().unwrap()),
        "{a}"
    );
    assert_eq!(alarms[1]["ExtendedStatistic"], "p99");
    let one = aws_ok(&ep, &["cloudwatch", "describe-alarms", "--alarm-names", "prod-latency"]);
    assert_eq!(one["MetricAlarms"].as_array().unwrap().len(), 1);
    // Refusals name what is wrong; nothing is made.
    let err = aws_err(
        &ep,
        ADMIN_KEY,
        ADMIN_SECRET,
        &[
            "cloudwatch",
            "put-metric-alarm",
            "--alarm-name",
            "ec2",
            "--namespace",
            "AWS/EC2",
            "--metric-name",
            "CPUUtilization",
            "--statistic",
            "Average",
            "--period",
            "60",
            "--evaluation-periods",
            "1",
            "--threshold",
            "1",
            "--comparison-operator",
            "GreaterThanThreshold",
        ],
    );
    assert!(
        err.contains("(InvalidParameterValue)") && err.contains("AWS/ApiGateway namespace only"),
        "{err}"
    );
    let err = aws_err(
        &ep,
        READ_KEY,
        READ_SECRET,
        &["cloudwatch", "delete-alarms", "--alarm-names", "canary-5xx"],
    );
    assert!(err.contains("AccessDenied"), "{err}");

    // JSON 1.0 (the SDKs before CBOR) and the query protocol (the oldest), signed by botocore.
    let out = python(&format!(
        r#"
status, headers, body = sign("POST", "monitoring", "{ep}/", json.dumps({{"AlarmNames": ["canary-5xx"]}}),
    {{"X-Amz-Target": "GraniteServiceVersion20100801.DescribeAlarms", "Content-Type": "application/x-amz-json-1.0"}})
print(status, json.loads(body)["MetricAlarms"][0]["Dimensions"][1]["Value"])
form = "Action=PutMetricAlarm&Version=2010-08-01&AlarmName=old-sdk&Namespace=AWS%2FApiGateway&MetricName=Count&Statistic=Sum"     "&Dimensions.member.1.Name=ApiName&Dimensions.member.1.Value=orders&Dimensions.member.2.Name=Stage&Dimensions.member.2.Value=prod"     "&Period=60&EvaluationPeriods=2&Threshold=1&ComparisonOperator=LessThanThreshold"
status, headers, body = sign("POST", "monitoring", "{ep}/", form, {{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}})
print(status, "PutMetricAlarmResponse" in body)
status, headers, body = sign("POST", "monitoring", "{ep}/", "Action=DescribeAlarms&Version=2010-08-01&AlarmNames.member.1=old-sdk",
    {{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}})
import xml.etree.ElementTree as ET
ns = {{"cw": "http://monitoring.amazonaws.com/doc/2010-08-01/"}}
root = ET.fromstring(body)
print(status, root.find(".//cw:MetricAlarms/cw:member/cw:ComparisonOperator", ns).text, root.find(".//cw:MetricAlarms/cw:member/cw:EvaluationPeriods", ns).text)
status, headers, body = sign("POST", "monitoring", "{ep}/", "Action=DescribeAlarms&Version=2010-08-01&StateValue=MAYBE",
    {{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}})
print(status, ET.fromstring(body).find(".//cw:Code", ns).text)
status, headers, body = sign("POST", "monitoring", "{ep}/", json.dumps({{"AlarmNames": ["old-sdk", "nope"]}}),
    {{"X-Amz-Target": "GraniteServiceVersion20100801.DeleteAlarms", "Content-Type": "application/x-amz-json-1.0"}})
print(status, json.loads(body)["__type"])
status, headers, body = sign("POST", "monitoring", "{ep}/", json.dumps({{"AlarmNames": ["old-sdk"]}}),
    {{"X-Amz-Target": "GraniteServiceVersion20100801.DeleteAlarms", "Content-Type": "application/x-amz-json-1.0"}})
print(status)
"#
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "200 prod/Canary",
            "200 True",
            "200 LessThanThreshold 2",
            "400 InvalidParameterValue",
            "404 ResourceNotFound",
            "200"
        ],
        "{out}"
    );
    assert_eq!(admin(&c, &s, "GET", "/v1/alarms/old-sdk", None).await.0, 404);

    // Metric reads over the gateway's own seconds: 20 requests counted, in both calls the CLI makes.
    let d = ok(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&c, &s, "PUT", "/v1/apis/orders/stages/prod", Some(json!({"deploymentId": d}))).await;
    for _ in 0..20 {
        assert_eq!(c.get(format!("{}/orders/prod/", s.gateway)).send().await.unwrap().status(), 200);
    }
    let (from, to) = (
        (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339(),
        (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339(),
    );
    let dims = ["Name=ApiName,Value=orders", "Name=Stage,Value=prod"];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = aws_ok(
            &ep,
            &[
                "cloudwatch",
                "get-metric-statistics",
                "--namespace",
                "AWS/ApiGateway",
                "--metric-name",
                "Count",
                "--dimensions",
                dims[0],
                dims[1],
                "--start-time",
                &from,
                "--end-time",
                &to,
                "--period",
                "3600",
                "--statistics",
                "Sum",
                "SampleCount",
                "--extended-statistics",
                "p99",
            ],
        );
        let points = st["Datapoints"].as_array().unwrap();
        let sum: f64 = points.iter().map(|p| p["Sum"].as_f64().unwrap()).sum();
        if sum == 20.0 {
            assert_eq!(points[0]["Unit"], "Count", "{st}");
            assert!(points[0]["ExtendedStatistics"]["p99"].is_number(), "{st}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "Count Sum {sum}: {st}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let queries = json!([{"Id": "requests", "MetricStat": {"Metric": {"Namespace": "AWS/ApiGateway", "MetricName": "Count",
        "Dimensions": [{"Name": "ApiName", "Value": "orders"}, {"Name": "Stage", "Value": "prod"}]}, "Period": 3600, "Stat": "Sum"}},
        {"Id": "canary", "MetricStat": {"Metric": {"Namespace": "AWS/ApiGateway", "MetricName": "Count",
        "Dimensions": [{"Name": "ApiName", "Value": "orders"}, {"Name": "Stage", "Value": "prod/Canary"}]}, "Period": 3600, "Stat": "Sum"}}]);
    let data = aws_ok(
        &ep,
        &[
            "cloudwatch",
            "get-metric-data",
            "--metric-data-queries",
            &queries.to_string(),
            "--start-time",
            &from,
            "--end-time",
            &to,
        ],
    );
    let results = data["MetricDataResults"].as_array().unwrap();
    assert_eq!(results[0]["Id"], "requests");
    assert_eq!(
        results[0]["Values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum::<f64>(),
        20.0,
        "{data}"
    );
    assert_eq!(
        results[0]["Timestamps"].as_array().unwrap().len(),
        results[0]["Values"].as_array().unwrap().len()
    );
    assert!(
        results[1]["Values"].as_array().unwrap().iter().all(|v| v.as_f64() == Some(0.0)),
        "no canary: {data}"
    );

    // The same in the query protocol (dates in ISO 8601, the p99 as a map entry).
    let out = python(&format!(
        r#"
import urllib.parse, xml.etree.ElementTree as ET
form = urllib.parse.urlencode({{"Action": "GetMetricStatistics", "Version": "2010-08-01", "Namespace": "AWS/ApiGateway", "MetricName": "Count",
    "Dimensions.member.1.Name": "ApiName", "Dimensions.member.1.Value": "orders", "Dimensions.member.2.Name": "Stage",
    "Dimensions.member.2.Value": "prod", "StartTime": "{from}", "EndTime": "{to}", "Period": "3600", "Statistics.member.1": "Sum",
    "ExtendedStatistics.member.1": "p99"}})
status, headers, body = sign("POST", "monitoring", "{ep}/", form, {{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}})
ns = {{"cw": "http://monitoring.amazonaws.com/doc/2010-08-01/"}}
root = ET.fromstring(body)
print(status, sum(float(e.text) for e in root.iterfind(".//cw:Datapoints/cw:member/cw:Sum", ns)),
    root.find(".//cw:ExtendedStatistics/cw:entry/cw:key", ns).text)
"#
    ));
    assert_eq!(out.trim(), "200 20.0 p99");

    // SetAlarmState: an alarm set to ALARM by hand stops the rollout that watches it.
    let d2 = ok(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"deploymentId": d2, "deploymentConfig": "Canary10Percent10Minutes", "alarms": ["canary-5xx"]});
    let r = ok(&c, &s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body)).await;
    let id = r["id"].as_str().unwrap().to_string();
    // While it runs, the stage is the rollout's: API Gateway's UpdateStage gets 409 ConflictException.
    let err = aws_err(
        &ep,
        ADMIN_KEY,
        ADMIN_SECRET,
        &[
            "apigateway",
            "update-stage",
            "--rest-api-id",
            "orders",
            "--stage-name",
            "prod",
            "--patch-operations",
            "op=replace,path=/canarySettings/percentTraffic,value=50",
        ],
    );
    assert!(err.contains("(ConflictException) when calling the UpdateStage operation"), "{err}");
    let (done, _, err) = aws(
        &ep,
        ADMIN_KEY,
        ADMIN_SECRET,
        &[
            "cloudwatch",
            "set-alarm-state",
            "--alarm-name",
            "canary-5xx",
            "--state-value",
            "ALARM",
            "--state-reason",
            "testing the rollback",
        ],
    );
    assert!(done, "{err}");
    let r = wait_rollout(&c, &s, &id, std::time::Duration::from_secs(30)).await;
    assert_eq!(r["status"], "RolledBack", "{r}");
    assert!(r["events"].to_string().contains("testing the rollback"), "{r}");
    let a = &aws_ok(&ep, &["cloudwatch", "describe-alarms", "--alarm-names", "canary-5xx"])["MetricAlarms"][0];
    assert_eq!(
        (&a["StateValue"], &a["StateReason"]),
        (&json!("ALARM"), &json!("testing the rollback")),
        "{a}"
    );
    let err = aws_err(
        &ep,
        ADMIN_KEY,
        ADMIN_SECRET,
        &[
            "cloudwatch",
            "set-alarm-state",
            "--alarm-name",
            "nope",
            "--state-value",
            "OK",
            "--state-reason",
            "x",
        ],
    );
    assert!(err.contains("(ResourceNotFound)"), "{err}");

    // The CLI deletes; /v1 sees it gone.
    let (done, _, err) = aws(
        &ep,
        ADMIN_KEY,
        ADMIN_SECRET,
        &["cloudwatch", "delete-alarms", "--alarm-names", "canary-5xx"],
    );
    assert!(done, "{err}");
    assert_eq!(admin(&c, &s, "GET", "/v1/alarms/canary-5xx", None).await.0, 404);
}

/// A hook server in Python: a CodeDeploy hook as a pipeline would write it, answering 202 and then
/// reporting with boto3's `put_lifecycle_event_hook_execution_status`. Prints its port, then one line
/// per hook it reported.
const HOOK_SERVER: &str = r#"
import json, sys, threading, boto3
from http.server import BaseHTTPRequestHandler, HTTPServer
cd = boto3.client("codedeploy")
class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        event = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(202)
        self.end_headers()
        def report():
            cd.put_lifecycle_event_hook_execution_status(deploymentId=event["DeploymentId"],
                lifecycleEventHookExecutionId=event["LifecycleEventHookExecutionId"], status="Succeeded")
            print("reported", event["DeploymentId"], event["lifecycleEvent"], flush=True)
        threading.Thread(target=report).start()
    def log_message(self, *args):
        pass
server = HTTPServer(("127.0.0.1", 0), Hook)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A child process killed (and reaped) when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn appspec(current: &str, target: &str, hook: Option<&str>) -> String {
    let hooks = hook.map_or(String::new(), |h| format!("Hooks:\n  - BeforeAllowTraffic: {h}\n"));
    let content = format!(
        "version: 0.0\nResources:\n  - ordersApi:\n      Type: AWS::Lambda::Function\n      Properties:\n        Name: orders\n        Alias: prod\n        CurrentVersion: {current}\n        TargetVersion: {target}\n{hooks}"
    );
    json!({"revisionType": "AppSpecContent", "appSpecContent": {"content": content}}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codedeploy_canary_pipeline_with_an_alarm_rolls_back_then_succeeds() {
    use std::io::BufRead;
    let (_dir, s) = start();
    let ep = s.aws.clone().unwrap();
    let c = client();
    let (v1, broken, v3) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::FailTenths(10)).await,
        Backend::start("v3", Behaviour::Echo).await,
    );
    // Three versions of the API (as three Lambda versions would be): each deployment's routes point at
    // its own backend.
    let mut versions = Vec::new();
    for b in [&v1, &broken, &v3] {
        let routes =
            json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": format!("http://{}/{{proxy}}", b.addr)}}]});
        ok(&c, &s, "PUT", "/v1/apis/orders", Some(routes)).await;
        let d = ok(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({"description": b.name}))).await;
        versions.push(d["id"].as_str().unwrap().to_string());
    }
    ok(
        &c,
        &s,
        "PUT",
        "/v1/apis/orders/stages/prod",
        Some(json!({"deploymentId": versions[0]})),
    )
    .await;
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 4);

    // The hook server, reporting through boto3 with the pipeline's environment.
    let mut hook = Command::new(venv().join("bin/python"))
        .arg("-c")
        .arg(HOOK_SERVER)
        .env("AWS_ACCESS_KEY_ID", ADMIN_KEY)
        .env("AWS_SECRET_ACCESS_KEY", ADMIN_SECRET)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_CODEDEPLOY", &ep)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut hook_out = std::io::BufReader::new(hook.stdout.take().unwrap()).lines();
    let _hook = KillOnDrop(hook);
    let hook_port = hook_out.next().unwrap().unwrap();

    // The pipeline, as it runs against AWS.
    let cli = |args: &[&str]| {
        let (done, out, err) = aws(&ep, ADMIN_KEY, ADMIN_SECRET, args);
        assert!(done, "aws {args:?}: {err}");
        if out.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str::<Value>(&out).unwrap()
        }
    };
    cli(&[
        "cloudwatch",
        "put-metric-alarm",
        "--alarm-name",
        "orders-canary-5xx",
        "--namespace",
        "AWS/ApiGateway",
        "--metric-name",
        "5XXError",
        "--dimensions",
        "Name=ApiName,Value=orders",
        "Name=Stage,Value=prod/Canary",
        "--statistic",
        "Average",
        "--period",
        "1",
        "--evaluation-periods",
        "3",
        "--datapoints-to-alarm",
        "2",
        "--threshold",
        "0.05",
        "--comparison-operator",
        "GreaterThanThreshold",
    ]);
    cli(&[
        "deploy",
        "create-deployment-config",
        "--deployment-config-name",
        "Canary10Percent1Minute",
        "--compute-platform",
        "Lambda",
        "--traffic-routing-config",
        "type=TimeBasedCanary,timeBasedCanary={canaryPercentage=10,canaryInterval=1}",
    ]);
    let cfg = cli(&[
        "deploy",
        "get-deployment-config",
        "--deployment-config-name",
        "Canary10Percent1Minute",
    ]);
    assert_eq!(
        cfg["deploymentConfigInfo"]["trafficRoutingConfig"]["timeBasedCanary"],
        json!({"canaryPercentage": 10, "canaryInterval": 1})
    );
    cli(&[
        "deploy",
        "create-application",
        "--application-name",
        "orders-app",
        "--compute-platform",
        "Lambda",
    ]);
    cli(&[
        "deploy",
        "create-deployment-group",
        "--application-name",
        "orders-app",
        "--deployment-group-name",
        "prod",
        "--service-role-arn",
        "arn:aws:iam::000000000000:role/codedeploy",
        "--deployment-config-name",
        "Canary10Percent1Minute",
        "--alarm-configuration",
        "enabled=true,alarms=[{name=orders-canary-5xx}]",
        "--auto-rollback-configuration",
        "enabled=true,events=DEPLOYMENT_FAILURE,DEPLOYMENT_STOP_ON_ALARM",
        "--tags",
        &format!("Key=canarygate:hook:CheckBefore,Value=http://127.0.0.1:{hook_port}/"),
    ]);
    let g = cli(&[
        "deploy",
        "get-deployment-group",
        "--application-name",
        "orders-app",
        "--deployment-group-name",
        "prod",
    ]);
    assert_eq!(
        g["deploymentGroupInfo"]["alarmConfiguration"]["alarms"],
        json!([{"name": "orders-canary-5xx"}])
    );

    // A broken version: the alarm stops it, it is rolled back, the waiter fails.
    let bad = cli(&[
        "deploy",
        "create-deployment",
        "--application-name",
        "orders-app",
        "--deployment-group-name",
        "prod",
        "--revision",
        &appspec(&versions[0], &versions[1], None),
    ])["deploymentId"]
        .as_str()
        .unwrap()
        .to_string();
    let (succeeded, _, err) = aws(
        &ep,
        ADMIN_KEY,
        ADMIN_SECRET,
        &["deploy", "wait", "deployment-successful", "--deployment-id", &bad],
    );
    assert!(!succeeded, "the waiter should fail on a rolled-back deployment");
    assert!(err.contains("Waiter DeploymentSuccessful failed"), "{err}");
    let info = &cli(&["deploy", "get-deployment", "--deployment-id", &bad])["deploymentInfo"];
    assert_eq!(info["status"], "Stopped", "{info}");
    assert_eq!(info["errorInformation"]["code"], "ALARM_ACTIVE", "{info}");
    assert!(
        info["rollbackInfo"]["rollbackMessage"]
            .as_str()
            .unwrap()
            .contains("orders-canary-5xx"),
        "{info}"
    );
    assert_eq!(
        ok(&c, &s, "GET", &format!("/v1/rollouts/{bad}"), None).await["status"],
        "RolledBack"
    );
    assert_eq!(
        ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await["deploymentId"],
        versions[0].as_str()
    );

    // A healthy version with a BeforeAllowTraffic hook reported through boto3: the waiter succeeds.
    let good = cli(&[
        "deploy",
        "create-deployment",
        "--application-name",
        "orders-app",
        "--deployment-group-name",
        "prod",
        "--revision",
        &appspec(&versions[0], &versions[2], Some("CheckBefore")),
    ])["deploymentId"]
        .as_str()
        .unwrap()
        .to_string();
    let (succeeded, _, err) = aws(
        &ep,
        ADMIN_KEY,
        ADMIN_SECRET,
        &["deploy", "wait", "deployment-successful", "--deployment-id", &good],
    );
    assert!(succeeded, "{err}");
    assert_eq!(hook_out.next().unwrap().unwrap(), format!("reported {good} BeforeAllowTraffic"));
    let info = &cli(&["deploy", "get-deployment", "--deployment-id", &good])["deploymentInfo"];
    assert_eq!(info["status"], "Succeeded");
    assert!(info.get("errorInformation").is_none(), "{info}");
    assert_eq!(
        ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await["deploymentId"],
        versions[2].as_str()
    );
    let listed = cli(&[
        "deploy",
        "list-deployments",
        "--application-name",
        "orders-app",
        "--deployment-group-name",
        "prod",
    ]);
    assert_eq!(listed["deployments"], json!([good, bad]));
    let (_, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
}

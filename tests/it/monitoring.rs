//! The alerts and the dashboard operators install from `deploy/`:
//! `deploy/kube-kms.rules.yml` (plain Prometheus rules) and
//! `deploy/prometheus-rules.yaml` (the same rules as a PrometheusRule) pass
//! `promtool check rules` and the promtool unit tests in
//! `tests/prometheus/kube-kms.rules.test.yml` (series that fire each alert and
//! series that do not); each alert links to its runbook section in
//! docs/alerts.md; and `deploy/grafana-dashboard.json` is valid JSON whose
//! queries, like the rules', name only metrics that a running `kube-kms serve`
//! exports on `/metrics`, and every metric it exports has a panel.
//!
//! promtool comes from Debian's `prometheus` package (tools/install-deps).
use crate::common::plugin::{init_keyring, temp_dir, ServeProcess};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_yaml_ng::Value;

const RULES: &str = "deploy/kube-kms.rules.yml";
const PROMETHEUS_RULE: &str = "deploy/prometheus-rules.yaml";
const RULES_TEST: &str = "tests/prometheus/kube-kms.rules.test.yml";
const DASHBOARD: &str = "deploy/grafana-dashboard.json";
const ALERTS_DOC: &str = "docs/alerts.md";
const RUNBOOK_BASE: &str = "https://github.com/example/kube-kms/blob/main/docs/alerts.md#";

/// The alerts issue 20 asks for, by what they watch.
const ALERTS: [&str; 5] = [
    "KubeKmsNotReady",
    "KubeKmsDecryptFailures",
    "KubeKmsKeyIdDisagreement",
    "KubeKmsKeyringReloadFailures",
    "KubeKmsSelfTestFailing",
];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Value {
    serde_yaml_ng::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: not YAML: {e}"))
}

/// Every rule of the plain rules file.
fn rules() -> Vec<Value> {
    let file = yaml(RULES);
    let groups = file["groups"].as_sequence().expect("groups");
    groups
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules").clone())
        .collect()
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): run tools/install-deps (Debian package prometheus)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn prometheus_rule_holds_the_same_rules_as_the_plain_rules_file() {
    let plain = yaml(RULES);
    let operator = yaml(PROMETHEUS_RULE);
    assert_eq!(operator["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert!(operator["metadata"]["name"].as_str().is_some());
    assert_eq!(
        operator["spec"], plain,
        "{PROMETHEUS_RULE} spec differs from {RULES}: copy the groups over"
    );
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", RULES]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "{checked}"
    );
    let tested = promtool(&["test", "rules", RULES_TEST]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // The unit tests cover every alert, each with a case that fires it and
    // one that does not (an empty exp_alerts).
    let tests = yaml(RULES_TEST);
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests["tests"].as_sequence().expect("tests") {
        for check in case["alert_rule_test"]
            .as_sequence()
            .expect("alert_rule_test")
        {
            let name = check["alertname"].as_str().expect("alertname").to_owned();
            match check["exp_alerts"].as_sequence().map(Vec::len) {
                Some(0) | None => silent.insert(name),
                Some(_) => firing.insert(name),
            };
        }
    }
    let all: BTreeSet<String> = ALERTS.iter().map(|a| a.to_string()).collect();
    assert_eq!(firing, all, "alerts without a firing case in {RULES_TEST}");
    assert_eq!(silent, all, "alerts without a silent case in {RULES_TEST}");
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to `-`, other
/// punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_in_the_docs() {
    let doc = read(ALERTS_DOC);
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(anchor)
        .collect();
    let mut names = BTreeSet::new();
    for rule in rules() {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        names.insert(name.to_owned());
        assert!(
            rule["labels"]["severity"].as_str().is_some(),
            "{name}: no severity"
        );
        let annotations = &rule["annotations"];
        for key in ["summary", "description"] {
            let text = annotations[key].as_str().unwrap_or_default();
            assert!(text.len() > 20, "{name}: no useful {key}: {text:?}");
        }
        let runbook = annotations["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no runbook_url"));
        let section = runbook
            .strip_prefix(RUNBOOK_BASE)
            .unwrap_or_else(|| panic!("{name}: runbook {runbook} is not in {ALERTS_DOC}"));
        assert_eq!(section, name.to_lowercase(), "{name}: runbook anchor");
        assert!(
            anchors.contains(section),
            "{name}: {ALERTS_DOC} has no section #{section} (sections: {anchors:?})"
        );
    }
    let expected: BTreeSet<String> = ALERTS.iter().map(|a| a.to_string()).collect();
    assert_eq!(names, expected);
}

/// Every `kube_kms_*` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("kube_kms_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

/// Every `expr` of the dashboard (panels, rows' panels, targets), by panel title.
fn dashboard_queries() -> BTreeMap<String, Vec<String>> {
    let text = read(DASHBOARD);
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: not JSON: {e}"));
    assert!(dashboard["title"].as_str().is_some(), "a dashboard title");
    assert!(dashboard["uid"].as_str().is_some(), "a dashboard uid");
    let mut queries = BTreeMap::new();
    let mut stack: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("every panel has a title");
        let exprs: Vec<String> = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{DASHBOARD}: panel {title:?} has no targets"))
            .iter()
            .map(|target| {
                target["expr"]
                    .as_str()
                    .unwrap_or_else(|| {
                        panic!("{DASHBOARD}: panel {title:?}: a target without expr")
                    })
                    .to_owned()
            })
            .collect();
        queries.insert(title.to_owned(), exprs);
    }
    queries
}

/// One HTTP/1.1 GET of `path` on `address`: the body (panics unless 200).
fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_query_only_metrics_the_plugin_exports() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let address = format!("127.0.0.1:{}", free_port());
    let serve = ServeProcess::start(dir.path(), &keyring, &["--metrics-addr", &address]).await;
    // Calls of every method, one of them failing, so every series has samples.
    let mut client = serve.client().await;
    let encrypted = client
        .encrypt(&[7u8; 32], "monitoring-1")
        .await
        .expect("Encrypt");
    client
        .decrypt_encrypted(&encrypted, "monitoring-2")
        .await
        .expect("Decrypt");
    let failed = client
        .decrypt(
            b"not a ciphertext",
            "no-such-key",
            &Default::default(),
            "monitoring-3",
        )
        .await;
    assert!(failed.is_err());
    let scrape = tokio::task::spawn_blocking(move || http_get(&address, "/metrics"))
        .await
        .expect("scrape");

    let families: BTreeSet<String> = scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let samples: BTreeSet<String> = scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect();
    assert!(
        families
            .iter()
            .filter(|f| f.starts_with("kube_kms_"))
            .count()
            >= 10,
        "{scrape}"
    );

    let dashboard = dashboard_queries();
    let mut used = BTreeSet::new();
    for (title, exprs) in &dashboard {
        let names: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        assert!(
            !names.is_empty(),
            "panel {title:?} queries no kube-kms metric"
        );
        for name in names {
            assert!(
                samples.contains(&name),
                "panel {title:?} queries {name}, which /metrics does not export:\n{scrape}"
            );
            used.insert(name);
        }
    }
    for rule in rules() {
        let expr = rule["expr"].as_str().expect("expr");
        let names = metric_names(expr);
        assert!(!names.is_empty(), "rule {expr} names no kube-kms metric");
        for name in names {
            assert!(
                samples.contains(&name),
                "rule {:?} queries {name}, which /metrics does not export:\n{scrape}",
                rule["alert"]
            );
        }
    }
    // The dashboard shows every metric family the plugin exports.
    for family in families.iter().filter(|f| f.starts_with("kube_kms_")) {
        assert!(
            used.iter().any(|name| name.starts_with(family.as_str())),
            "no dashboard panel shows {family}"
        );
    }
}

//! Checks the files operators install from `deploy/` (and the commands in
//! `docs/deploy.md`): every manifest parses, carries the security and operational
//! fields it promises, and every file names the same socket, keyring, provider and
//! metrics address. Each value is read from each file on its own, so a file that
//! drifts makes a test fail. The backup-check script is run for real.
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The contract with the other parts of the project (names fixed by the plugin and
/// by kube-apiserver's configuration); each file must also agree with the others.
const SOCKET: &str = "/var/run/kube-kms/kms.sock";
const KEYRING: &str = "/etc/kube-kms/keyring.json";
const PROVIDER: &str = "kube-kms";
const METRICS_ADDR: &str = "127.0.0.1:9464";

const ENCRYPTION_CONFIG: &str = "deploy/encryption-config.yaml";
const STATIC_POD: &str = "deploy/kube-kms.static-pod.yaml";
const KUBEADM_PATCH: &str = "deploy/kubeadm-patch.yaml";
const SYSTEMD_UNIT: &str = "deploy/kube-kms.service";
const CRONJOB: &str = "deploy/etcd-inspect-cronjob.yaml";
const BACKUP_SCRIPT: &str = "deploy/etcd-inspect-backup-check.sh";
const DEPLOY_DOC: &str = "docs/deploy.md";

// ---------------------------------------------------------------------------
// Reading the files
// ---------------------------------------------------------------------------

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// All YAML documents of a file.
fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = read(relative);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|e| panic!("{relative}: not YAML: {e}"))
        })
        .collect()
}

/// The single YAML document of a file.
fn yaml(relative: &str) -> Value {
    let mut documents = yaml_documents(relative);
    assert_eq!(
        documents.len(),
        1,
        "{relative}: expected exactly one YAML document"
    );
    documents.remove(0)
}

/// The node at a dotted path (`spec.containers.0.image`); panics naming the file and
/// path when it is missing, so a test failure says what is absent.
fn at<'a>(file: &str, root: &'a Value, path: &str) -> &'a Value {
    let mut node = root;
    for part in path.split('.') {
        let next = match part.parse::<usize>() {
            Ok(index) => node.get(index),
            Err(_) => node.get(part),
        };
        node = next.unwrap_or_else(|| panic!("{file}: `{path}` is missing (at `{part}`)"));
    }
    node
}

fn text_at<'a>(file: &str, root: &'a Value, path: &str) -> &'a str {
    at(file, root, path)
        .as_str()
        .unwrap_or_else(|| panic!("{file}: `{path}` is not a string"))
}

fn bool_at(file: &str, root: &Value, path: &str) -> bool {
    at(file, root, path)
        .as_bool()
        .unwrap_or_else(|| panic!("{file}: `{path}` is not a boolean"))
}

fn int_at(file: &str, root: &Value, path: &str) -> i64 {
    at(file, root, path)
        .as_i64()
        .unwrap_or_else(|| panic!("{file}: `{path}` is not an integer"))
}

fn list_at<'a>(file: &str, root: &'a Value, path: &str) -> &'a Vec<Value> {
    at(file, root, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{file}: `{path}` is not a list"))
}

fn strings(file: &str, values: &[Value]) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{file}: non-string list item {v:?}"))
                .to_owned()
        })
        .collect()
}

/// Values of `flag` in an argument vector, in both `--flag=value` and
/// `--flag value` form.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == flag {
            if let Some(value) = iter.next() {
                values.push(value.clone());
            }
        } else if let Some(value) = arg
            .strip_prefix(flag)
            .and_then(|rest| rest.strip_prefix('='))
        {
            values.push(value.to_owned());
        }
    }
    values
}

/// The one value of `flag`; panics when it is absent or given twice.
fn single_flag(file: &str, args: &[String], flag: &str) -> String {
    let values = flag_values(args, flag);
    assert_eq!(
        values.len(),
        1,
        "{file}: expected {flag} exactly once in {args:?}"
    );
    values[0].clone()
}

/// Every value given to `flag` anywhere in free text (docs, comments), as
/// `flag=value` or `flag value`; a longer flag with the same prefix does not count.
/// In the `flag value` form, prose after the flag ("--metrics-addr if ...") is
/// told apart from a value: a value here is a path or an address (it starts with
/// `/` or a digit, or holds a `:`).
fn flag_values_in_text(text: &str, flag: &str) -> Vec<String> {
    let take_value = |start: &str| -> String {
        start
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '`' | '"' | '\'' | ')' | ','))
            .collect()
    };
    let mut values = Vec::new();
    let mut rest = text;
    while let Some(found) = rest.find(flag) {
        let after = &rest[found + flag.len()..];
        if let Some(start) = after.strip_prefix('=') {
            values.push(take_value(start));
        } else if let Some(start) = after.strip_prefix(' ') {
            let value = take_value(start);
            let looks_like_value = value.starts_with('/')
                || value.starts_with(|c: char| c.is_ascii_digit())
                || value.contains(':');
            if looks_like_value {
                values.push(value);
            }
        }
        rest = after;
    }
    values
}

/// Every `unix://` endpoint in free text, as a filesystem path.
fn unix_endpoints_in_text(text: &str) -> Vec<String> {
    text.match_indices("unix://")
        .map(|(index, prefix)| {
            text[index + prefix.len()..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '`' | '"' | '\'' | ')' | ','))
                .collect()
        })
        .collect()
}

fn parent_dir(path: &str) -> String {
    Path::new(path)
        .parent()
        .unwrap_or_else(|| panic!("{path} has no parent directory"))
        .to_string_lossy()
        .into_owned()
}

/// `/var/run` is a symlink to `/run` on every systemd distribution.
fn without_var_run(path: &str) -> String {
    match path.strip_prefix("/var/run/") {
        Some(rest) => format!("/run/{rest}"),
        None => path.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Per-file views
// ---------------------------------------------------------------------------

/// The kms provider entries of every `resources` entry, active or in the
/// commented-out configmaps example.
struct EncryptionConfig {
    /// (resource names, provider list) per entry, the example last.
    entries: Vec<(Vec<String>, Vec<Value>)>,
}

impl EncryptionConfig {
    fn load() -> Self {
        let config = yaml(ENCRYPTION_CONFIG);
        assert_eq!(
            text_at(ENCRYPTION_CONFIG, &config, "apiVersion"),
            "apiserver.config.k8s.io/v1"
        );
        assert_eq!(
            text_at(ENCRYPTION_CONFIG, &config, "kind"),
            "EncryptionConfiguration"
        );
        let mut entries = Self::entries_of(&config, ENCRYPTION_CONFIG);
        entries.extend(Self::entries_of(
            &Self::configmaps_example(),
            "configmaps example",
        ));
        EncryptionConfig { entries }
    }

    fn entries_of(config: &Value, origin: &str) -> Vec<(Vec<String>, Vec<Value>)> {
        list_at(origin, config, "resources")
            .iter()
            .map(|entry| {
                (
                    strings(origin, list_at(origin, entry, "resources")),
                    list_at(origin, entry, "providers").clone(),
                )
            })
            .collect()
    }

    /// The file with its commented-out configmaps entry uncommented the way its
    /// comment says (drop the first character of each line of the entry).
    fn configmaps_example() -> Value {
        let text = read(ENCRYPTION_CONFIG);
        let begin = "# --- example: configmaps (begin) ---";
        let end = "# --- example: configmaps (end) ---";
        let start = text.find(begin).expect("configmaps example begin marker") + begin.len();
        let stop = text.find(end).expect("configmaps example end marker");
        let uncommented: String = text[start..stop]
            .lines()
            .filter(|line| line.starts_with("#  "))
            .map(|line| format!("{}\n", &line[1..]))
            .collect();
        assert!(
            !uncommented.is_empty(),
            "configmaps example has no YAML lines"
        );
        let document = format!("resources:\n{uncommented}");
        serde_yaml_ng::from_str(&document).unwrap_or_else(|e| {
            panic!("configmaps example does not parse once uncommented: {e}\n{document}")
        })
    }

    fn kms_providers(&self) -> Vec<&Value> {
        self.entries
            .iter()
            .flat_map(|(_, providers)| providers.iter().filter_map(|p| p.get("kms")))
            .collect()
    }
}

fn static_pod() -> Value {
    yaml(STATIC_POD)
}

fn static_pod_container(pod: &Value) -> &Value {
    let containers = list_at(STATIC_POD, pod, "spec.containers");
    assert_eq!(containers.len(), 1, "the static pod runs one container");
    &containers[0]
}

fn static_pod_args(pod: &Value) -> Vec<String> {
    let container = static_pod_container(pod);
    let mut args = strings(STATIC_POD, list_at(STATIC_POD, container, "command"));
    if let Some(more) = container.get("args").and_then(Value::as_sequence) {
        args.extend(strings(STATIC_POD, more));
    }
    args
}

/// (host path, hostPath type, mount path, read-only) of the static pod volume
/// mounted at exactly `mount_path`.
fn static_pod_mount(pod: &Value, mount_path: &str) -> (String, String, bool) {
    let container = static_pod_container(pod);
    let mount = list_at(STATIC_POD, container, "volumeMounts")
        .iter()
        .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(mount_path))
        .unwrap_or_else(|| panic!("{STATIC_POD}: nothing is mounted at {mount_path}"));
    let name = text_at(STATIC_POD, mount, "name");
    let read_only = mount
        .get("readOnly")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let volume = list_at(STATIC_POD, pod, "spec.volumes")
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{STATIC_POD}: no volume named {name}"));
    (
        text_at(STATIC_POD, volume, "hostPath.path").to_owned(),
        text_at(STATIC_POD, volume, "hostPath.type").to_owned(),
        read_only,
    )
}

/// A systemd unit as (section, key, value) lines, comments and blanks dropped.
struct SystemdUnit {
    entries: Vec<(String, String, String)>,
}

impl SystemdUnit {
    fn load() -> Self {
        let mut section = String::new();
        let mut entries = Vec::new();
        for (number, line) in read(SYSTEMD_UNIT).lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "{SYSTEMD_UNIT}:{}: keep directives on one line",
                number + 1
            );
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{SYSTEMD_UNIT}:{}: not key=value: {line}", number + 1));
            assert!(
                !section.is_empty(),
                "{SYSTEMD_UNIT}:{}: directive outside a section",
                number + 1
            );
            entries.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
        SystemdUnit { entries }
    }

    fn values(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The one value of a directive in [Service].
    fn service(&self, key: &str) -> &str {
        let values = self.values("Service", key);
        assert_eq!(
            values.len(),
            1,
            "{SYSTEMD_UNIT}: expected [Service] {key}= exactly once, got {values:?}"
        );
        values[0]
    }

    fn exec_start_args(&self) -> Vec<String> {
        let line = self.service("ExecStart");
        assert!(
            !line.contains(['"', '\'', '\\']),
            "{SYSTEMD_UNIT}: ExecStart must not need quoting: {line}"
        );
        line.split_whitespace().map(str::to_owned).collect()
    }
}

/// kubeadm's apiServer.extraArgs (v1beta4: a list of name/value) as pairs.
fn kubeadm_extra_args(patch: &Value) -> Vec<(String, String)> {
    list_at(KUBEADM_PATCH, patch, "apiServer.extraArgs")
        .iter()
        .map(|arg| {
            let value = at(KUBEADM_PATCH, arg, "value");
            let value = value.as_str().unwrap_or_else(|| {
                panic!("{KUBEADM_PATCH}: extraArgs values must be strings (quote \"true\"), got {value:?}")
            });
            (text_at(KUBEADM_PATCH, arg, "name").to_owned(), value.to_owned())
        })
        .collect()
}

/// The kubeadm extraVolume whose mountPath is `mount_path`.
fn kubeadm_volume<'a>(patch: &'a Value, mount_path: &str) -> &'a Value {
    list_at(KUBEADM_PATCH, patch, "apiServer.extraVolumes")
        .iter()
        .find(|v| v.get("mountPath").and_then(Value::as_str) == Some(mount_path))
        .unwrap_or_else(|| panic!("{KUBEADM_PATCH}: no extraVolume mounted at {mount_path}"))
}

// ---------------------------------------------------------------------------
// encryption-config.yaml
// ---------------------------------------------------------------------------

#[test]
fn encryption_config_encrypts_secrets_with_kube_kms_first_and_identity_last() {
    let config = EncryptionConfig::load();
    let (resources, providers) = &config.entries[0];
    assert_eq!(resources, &["secrets"], "the first entry covers secrets");
    assert!(
        providers.len() >= 2,
        "secrets need kube-kms and the identity fallback"
    );
    let kms = providers[0]
        .get("kms")
        .expect("the first provider for secrets must be kms: the first provider writes");
    assert_eq!(
        text_at(ENCRYPTION_CONFIG, kms, "apiVersion"),
        "v2",
        "kms apiVersion defaults to v1"
    );
    assert_eq!(text_at(ENCRYPTION_CONFIG, kms, "name"), PROVIDER);
    assert_eq!(
        text_at(ENCRYPTION_CONFIG, kms, "endpoint"),
        format!("unix://{SOCKET}")
    );
    assert_eq!(text_at(ENCRYPTION_CONFIG, kms, "timeout"), "3s");
    assert!(
        kms.get("cachesize").is_none(),
        "cachesize is rejected for kms v2"
    );
    let last = providers.last().expect("providers");
    assert!(
        last.get("identity").is_some(),
        "identity must be the last provider, got {last:?}"
    );
    let identity_count = providers
        .iter()
        .filter(|p| p.get("identity").is_some())
        .count();
    assert_eq!(identity_count, 1, "identity exactly once, last");
}

#[test]
fn encryption_config_configmaps_example_parses_and_matches_secrets() {
    let config = EncryptionConfig::load();
    assert_eq!(
        config.entries.len(),
        2,
        "secrets plus the configmaps example"
    );
    let (resources, providers) = &config.entries[1];
    assert_eq!(resources, &["configmaps"]);
    assert_eq!(
        providers, &config.entries[0].1,
        "the configmaps example must use the same providers as secrets"
    );
}

#[test]
fn encryption_config_explains_order_and_automatic_reload() {
    let text = read(ENCRYPTION_CONFIG);
    for needle in [
        "--encryption-provider-config-automatic-reload=true",
        "FIRST provider",
        "identity LAST",
        "remove `- identity: {}`",
        "Never put identity first",
    ] {
        assert!(
            text.contains(needle),
            "{ENCRYPTION_CONFIG}: comment about {needle:?} is missing"
        );
    }
}

// ---------------------------------------------------------------------------
// kube-kms.static-pod.yaml
// ---------------------------------------------------------------------------

#[test]
fn static_pod_is_a_node_critical_host_network_pod_in_kube_system() {
    let pod = static_pod();
    assert_eq!(text_at(STATIC_POD, &pod, "apiVersion"), "v1");
    assert_eq!(text_at(STATIC_POD, &pod, "kind"), "Pod");
    assert_eq!(
        text_at(STATIC_POD, &pod, "metadata.namespace"),
        "kube-system"
    );
    assert_eq!(
        text_at(STATIC_POD, &pod, "spec.priorityClassName"),
        "system-node-critical"
    );
    assert_eq!(int_at(STATIC_POD, &pod, "spec.priority"), 2_000_001_000);
    assert!(
        bool_at(STATIC_POD, &pod, "spec.hostNetwork"),
        "loopback metrics need the host network"
    );
    assert!(!bool_at(
        STATIC_POD,
        &pod,
        "spec.automountServiceAccountToken"
    ));
    let container = static_pod_container(&pod);
    let image = text_at(STATIC_POD, container, "image");
    assert!(image.contains("kube-kms"), "image {image}");
    let args = static_pod_args(&pod);
    assert_eq!(args[0], "/usr/local/bin/kube-kms");
    assert_eq!(args[1], "serve");
}

#[test]
fn static_pod_is_locked_down() {
    let pod = static_pod();
    let container = static_pod_container(&pod);
    // seccomp: the container's own setting wins over the pod's.
    let seccomp = container
        .get("securityContext")
        .and_then(|s| s.get("seccompProfile"))
        .or_else(|| {
            pod.get("spec")
                .and_then(|s| s.get("securityContext"))
                .and_then(|s| s.get("seccompProfile"))
        })
        .expect("a seccompProfile on the pod or the container");
    assert_eq!(text_at(STATIC_POD, seccomp, "type"), "RuntimeDefault");
    let security = at(STATIC_POD, container, "securityContext");
    assert_eq!(
        strings(
            STATIC_POD,
            list_at(STATIC_POD, security, "capabilities.drop")
        ),
        ["ALL"]
    );
    assert!(
        security
            .get("capabilities")
            .and_then(|c| c.get("add"))
            .is_none(),
        "no capability added"
    );
    assert!(bool_at(STATIC_POD, security, "readOnlyRootFilesystem"));
    assert!(!bool_at(STATIC_POD, security, "allowPrivilegeEscalation"));
    assert!(!bool_at(STATIC_POD, security, "privileged"));
    // uid 0 with no capabilities, the same identity as the systemd unit: the keyring
    // stays root-owned (see the comment in the manifest).
    assert_eq!(int_at(STATIC_POD, security, "runAsUser"), 0);
    assert!(!bool_at(STATIC_POD, security, "runAsNonRoot"));
    assert_eq!(
        SystemdUnit::load().service("User"),
        "root",
        "pod and unit run as the same user"
    );
    for forbidden in ["hostPID", "hostIPC"] {
        assert!(
            pod.get("spec").and_then(|s| s.get(forbidden)).is_none(),
            "{forbidden} must not be set"
        );
    }
}

#[test]
fn static_pod_has_requests_and_limits() {
    let pod = static_pod();
    let resources = at(STATIC_POD, static_pod_container(&pod), "resources");
    for path in [
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
    ] {
        let value = at(STATIC_POD, resources, path);
        assert!(
            value.as_str().is_some_and(|s| !s.is_empty()),
            "{path} must be a quantity string, got {value:?}"
        );
    }
    assert_eq!(text_at(STATIC_POD, resources, "limits.memory"), "64Mi");
}

#[test]
fn static_pod_probes_livez_and_readyz_on_the_metrics_port() {
    let pod = static_pod();
    let container = static_pod_container(&pod);
    let metrics_addr = single_flag(STATIC_POD, &static_pod_args(&pod), "--metrics-addr");
    let (host, port) = metrics_addr
        .rsplit_once(':')
        .expect("--metrics-addr is host:port");
    let port: i64 = port.parse().expect("numeric metrics port");
    let declared = list_at(STATIC_POD, container, "ports")
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(int_at(STATIC_POD, declared, "containerPort"), port);
    for (probe, path) in [
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/livez"),
    ] {
        let get = at(STATIC_POD, container, &format!("{probe}.httpGet"));
        assert_eq!(text_at(STATIC_POD, get, "path"), path, "{probe}");
        assert_eq!(
            int_at(STATIC_POD, get, "port"),
            port,
            "{probe} must hit --metrics-addr's port"
        );
        // The listener is on loopback; kubelet would otherwise probe the node IP.
        assert_eq!(
            text_at(STATIC_POD, get, "host"),
            host,
            "{probe} must hit --metrics-addr's host"
        );
        assert_eq!(text_at(STATIC_POD, get, "scheme"), "HTTP", "{probe}");
    }
}

#[test]
fn static_pod_mounts_the_keyring_directory_read_only() {
    let pod = static_pod();
    let keyring = single_flag(STATIC_POD, &static_pod_args(&pod), "--keyring");
    let keyring_dir = parent_dir(&keyring);
    // The directory, not the file: a rename-replaced file is invisible through a
    // bind mount of the old inode.
    let container = static_pod_container(&pod);
    assert!(
        !list_at(STATIC_POD, container, "volumeMounts")
            .iter()
            .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(keyring.as_str())),
        "mount the keyring directory, never the keyring file"
    );
    let (host_path, kind, read_only) = static_pod_mount(&pod, &keyring_dir);
    assert_eq!(
        host_path, keyring_dir,
        "the keyring is at the same path on the host and in the pod"
    );
    assert_eq!(
        kind, "Directory",
        "a node without a keyring must fail at pod start"
    );
    assert!(read_only, "the plugin only reads the keyring");
}

#[test]
fn static_pod_mounts_the_socket_directory_writable_at_the_host_path() {
    let pod = static_pod();
    let socket = single_flag(STATIC_POD, &static_pod_args(&pod), "--socket");
    let socket_dir = parent_dir(&socket);
    let (host_path, kind, read_only) = static_pod_mount(&pod, &socket_dir);
    assert_eq!(
        host_path, socket_dir,
        "kube-apiserver finds the socket at the same path on the host"
    );
    assert_eq!(kind, "DirectoryOrCreate");
    assert!(!read_only, "the plugin creates its socket there");
}

#[test]
fn static_pod_is_the_same_on_every_node() {
    let pod = static_pod();
    let spec = at(STATIC_POD, &pod, "spec");
    for node_specific in ["nodeName", "nodeSelector", "affinity"] {
        assert!(
            spec.get(node_specific).is_none(),
            "{node_specific} ties the static pod to one node"
        );
    }
    // No address but loopback anywhere in the manifest's YAML (comments excluded).
    let rendered = serde_yaml_ng::to_string(&pod).expect("render");
    for word in rendered.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
        let octets: Vec<&str> = word.split('.').collect();
        if octets.len() == 4 && octets.iter().all(|o| o.parse::<u8>().is_ok()) {
            assert!(
                word.starts_with("127."),
                "{STATIC_POD}: node-specific address {word}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// kubeadm-patch.yaml
// ---------------------------------------------------------------------------

#[test]
fn kubeadm_patch_enables_the_encryption_config_with_automatic_reload() {
    let patch = yaml(KUBEADM_PATCH);
    assert_eq!(
        text_at(KUBEADM_PATCH, &patch, "apiVersion"),
        "kubeadm.k8s.io/v1beta4"
    );
    assert_eq!(
        text_at(KUBEADM_PATCH, &patch, "kind"),
        "ClusterConfiguration"
    );
    let args = kubeadm_extra_args(&patch);
    let names: BTreeSet<&str> = args.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), args.len(), "an extraArg is given twice");
    let value = |name: &str| {
        args.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{KUBEADM_PATCH}: extraArg {name} missing"))
    };
    assert_eq!(value("encryption-provider-config-automatic-reload"), "true");
    let config_path = value("encryption-provider-config");
    // The config's directory is mounted (read-only, same path): automatic reload
    // needs the directory, not the file.
    let config_dir = parent_dir(&config_path);
    let volume = kubeadm_volume(&patch, &config_dir);
    assert_eq!(text_at(KUBEADM_PATCH, volume, "hostPath"), config_dir);
    assert!(bool_at(KUBEADM_PATCH, volume, "readOnly"));
    assert!(
        !list_at(KUBEADM_PATCH, &patch, "apiServer.extraVolumes")
            .iter()
            .any(|v| v.get("mountPath").and_then(Value::as_str) == Some(config_path.as_str())),
        "mount the EncryptionConfiguration's directory, not the file"
    );
    // The v1beta3 form is documented in the comments.
    assert!(read(KUBEADM_PATCH).contains("v1beta3"));
}

#[test]
fn kubeadm_patch_mounts_the_plugin_socket_directory() {
    let patch = yaml(KUBEADM_PATCH);
    let socket_dir = parent_dir(SOCKET);
    let volume = kubeadm_volume(&patch, &socket_dir);
    assert_eq!(text_at(KUBEADM_PATCH, volume, "hostPath"), socket_dir);
    assert_eq!(
        text_at(KUBEADM_PATCH, volume, "pathType"),
        "DirectoryOrCreate"
    );
    // kube-apiserver only connects; a read-only mount does not stop connect(2).
    assert!(bool_at(KUBEADM_PATCH, volume, "readOnly"));
}

// ---------------------------------------------------------------------------
// kube-kms.service
// ---------------------------------------------------------------------------

#[test]
fn systemd_unit_is_sandboxed() {
    let unit = SystemdUnit::load();
    for (key, expected) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("UMask", "0077"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RuntimeDirectory", "kube-kms"),
        ("User", "root"),
        ("LimitCORE", "0"),
    ] {
        assert_eq!(unit.service(key), expected, "[Service] {key}");
    }
    let filters = unit.values("Service", "SystemCallFilter");
    assert!(
        filters.contains(&"@system-service"),
        "SystemCallFilter=@system-service, got {filters:?}"
    );
    assert!(unit
        .values("Install", "WantedBy")
        .contains(&"multi-user.target"));
}

#[test]
fn systemd_unit_writes_only_to_the_socket_directory() {
    let unit = SystemdUnit::load();
    let args = unit.exec_start_args();
    let socket_dir = parent_dir(&single_flag(SYSTEMD_UNIT, &args, "--socket"));
    assert_eq!(
        unit.values("Service", "ReadWritePaths"),
        [socket_dir.as_str()],
        "ReadWritePaths must be the socket directory only"
    );
    // RuntimeDirectory=NAME is /run/NAME, which must be the socket directory too.
    assert_eq!(
        format!("/run/{}", unit.service("RuntimeDirectory")),
        without_var_run(&socket_dir)
    );
    let keyring = single_flag(SYSTEMD_UNIT, &args, "--keyring");
    assert!(
        !keyring.starts_with(&format!("{socket_dir}/")),
        "the keyring must not be under the writable socket directory"
    );
    for key in ["ReadWritePaths", "BindPaths"] {
        for value in unit.values("Service", key) {
            assert!(
                !keyring.starts_with(value),
                "{key}={value} makes the keyring writable"
            );
        }
    }
}

#[test]
fn systemd_unit_runs_the_installed_binary() {
    let unit = SystemdUnit::load();
    let args = unit.exec_start_args();
    assert_eq!(args[0], "/usr/local/bin/kube-kms");
    assert_eq!(args[1], "serve");
}

/// systemd's own parser, where it is installed: every directive known, nothing
/// ignored, and the sandbox exposure score stays low.
#[test]
fn systemd_unit_passes_systemd_analyze() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed; the directive checks above still ran"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // verify checks that ExecStart exists: point it at the real binary.
    let unit_text =
        read(SYSTEMD_UNIT).replace("/usr/local/bin/kube-kms", env!("CARGO_BIN_EXE_kube-kms"));
    let unit_path = dir.path().join("kube-kms.service");
    std::fs::write(&unit_path, unit_text).expect("write unit");
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert!(
        !stderr.contains("ignoring") && !stderr.contains("Unknown"),
        "systemd ignores part of the unit: {stderr}"
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit_path)
        .output()
        .expect("run systemd-analyze security");
    let stdout = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = stdout
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for kube-kms.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {stdout}"));
    assert!(
        exposure <= 2.0,
        "systemd-analyze security exposure {exposure} > 2.0:\n{stdout}"
    );
}

// ---------------------------------------------------------------------------
// Agreement across files
// ---------------------------------------------------------------------------

/// Socket paths as each file states them, each read independently.
fn socket_paths_by_file() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for kms in EncryptionConfig::load().kms_providers() {
        let endpoint = text_at(ENCRYPTION_CONFIG, kms, "endpoint");
        let path = endpoint
            .strip_prefix("unix://")
            .unwrap_or_else(|| panic!("{ENCRYPTION_CONFIG}: endpoint {endpoint} is not unix://"));
        found.push((ENCRYPTION_CONFIG.to_owned(), path.to_owned()));
    }
    found.push((
        STATIC_POD.to_owned(),
        single_flag(STATIC_POD, &static_pod_args(&static_pod()), "--socket"),
    ));
    found.push((
        SYSTEMD_UNIT.to_owned(),
        single_flag(
            SYSTEMD_UNIT,
            &SystemdUnit::load().exec_start_args(),
            "--socket",
        ),
    ));
    for file in [
        DEPLOY_DOC,
        ENCRYPTION_CONFIG,
        STATIC_POD,
        SYSTEMD_UNIT,
        KUBEADM_PATCH,
    ] {
        let text = read(file);
        for path in unix_endpoints_in_text(&text)
            .into_iter()
            .chain(flag_values_in_text(&text, "--socket"))
        {
            found.push((format!("{file} (text)"), path));
        }
    }
    found
}

#[test]
fn socket_path_agrees_across_all_files() {
    let found = socket_paths_by_file();
    assert!(
        found.iter().any(|(file, _)| file.starts_with(DEPLOY_DOC)),
        "docs name the socket"
    );
    for (file, path) in &found {
        assert_eq!(path, SOCKET, "{file} names socket {path}");
    }
    // The directory kube-apiserver mounts (kubeadm) and the one the plugin's pod
    // and unit write to hold that socket.
    let socket_dir = parent_dir(SOCKET);
    let patch = yaml(KUBEADM_PATCH);
    assert_eq!(
        text_at(
            KUBEADM_PATCH,
            kubeadm_volume(&patch, &socket_dir),
            "hostPath"
        ),
        socket_dir
    );
    assert_eq!(static_pod_mount(&static_pod(), &socket_dir).0, socket_dir);
    assert_eq!(
        SystemdUnit::load().values("Service", "ReadWritePaths"),
        [socket_dir.as_str()]
    );
}

#[test]
fn keyring_path_agrees_across_all_files() {
    let mut found = vec![
        (
            STATIC_POD.to_owned(),
            single_flag(STATIC_POD, &static_pod_args(&static_pod()), "--keyring"),
        ),
        (
            SYSTEMD_UNIT.to_owned(),
            single_flag(
                SYSTEMD_UNIT,
                &SystemdUnit::load().exec_start_args(),
                "--keyring",
            ),
        ),
    ];
    for file in [
        DEPLOY_DOC,
        STATIC_POD,
        SYSTEMD_UNIT,
        KUBEADM_PATCH,
        ENCRYPTION_CONFIG,
    ] {
        for path in flag_values_in_text(&read(file), "--keyring") {
            found.push((format!("{file} (text)"), path));
        }
    }
    assert!(
        found
            .iter()
            .filter(|(file, _)| file.starts_with(DEPLOY_DOC))
            .count()
            >= 3,
        "docs show the keyring commands"
    );
    for (file, path) in &found {
        assert_eq!(path, KEYRING, "{file} names keyring {path}");
    }
    let keyring_dir = parent_dir(KEYRING);
    assert_eq!(static_pod_mount(&static_pod(), &keyring_dir).0, keyring_dir);
}

#[test]
fn provider_name_agrees_across_all_files() {
    let config = EncryptionConfig::load();
    let names: Vec<&str> = config
        .kms_providers()
        .into_iter()
        .map(|kms| text_at(ENCRYPTION_CONFIG, kms, "name"))
        .collect();
    assert_eq!(names.len(), 2, "secrets and the configmaps example");
    let prefix = "k8s:enc:kms:v2:";
    let docs = read(DEPLOY_DOC);
    let in_docs: Vec<&str> = docs
        .match_indices(prefix)
        .filter_map(|(i, _)| docs[i + prefix.len()..].split(':').next())
        .collect();
    assert!(!in_docs.is_empty(), "docs show the stored prefix");
    for name in names.into_iter().chain(in_docs) {
        assert_eq!(name, PROVIDER);
        assert!(!name.contains(':'), "a provider name cannot contain ':'");
    }
    // etcd-inspect's `--require-provider kms-v2:NAME`, wherever a file names one
    // (script default, CronJob env, docs, comments).
    let mut required = Vec::new();
    for file in [DEPLOY_DOC, ENCRYPTION_CONFIG, BACKUP_SCRIPT, CRONJOB] {
        let text = read(file);
        for (index, prefix) in text.match_indices("kms-v2:") {
            let name: String = text[index + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                .collect();
            required.push((file, name));
        }
    }
    for file in [DEPLOY_DOC, BACKUP_SCRIPT, CRONJOB] {
        assert!(
            required.iter().any(|(f, _)| *f == file),
            "{file} requires the provider by name (kms-v2:{PROVIDER})"
        );
    }
    for (file, name) in required {
        assert_eq!(name, PROVIDER, "{file} requires kms-v2:{name}");
    }
}

#[test]
fn metrics_address_agrees_across_all_files() {
    let mut found = vec![
        (
            STATIC_POD.to_owned(),
            single_flag(
                STATIC_POD,
                &static_pod_args(&static_pod()),
                "--metrics-addr",
            ),
        ),
        (
            SYSTEMD_UNIT.to_owned(),
            single_flag(
                SYSTEMD_UNIT,
                &SystemdUnit::load().exec_start_args(),
                "--metrics-addr",
            ),
        ),
    ];
    for file in [DEPLOY_DOC, STATIC_POD, SYSTEMD_UNIT] {
        for addr in flag_values_in_text(&read(file), "--metrics-addr") {
            found.push((format!("{file} (text)"), addr));
        }
    }
    let docs = read(DEPLOY_DOC);
    for endpoint in ["/metrics", "/livez", "/readyz"] {
        assert!(
            docs.contains(&format!("http://{METRICS_ADDR}{endpoint}")),
            "docs show {endpoint} at {METRICS_ADDR}"
        );
    }
    for (file, addr) in &found {
        assert_eq!(addr, METRICS_ADDR, "{file} names metrics address {addr}");
    }
}

#[test]
fn encryption_config_path_agrees_across_all_files() {
    let patch = yaml(KUBEADM_PATCH);
    let from_kubeadm = kubeadm_extra_args(&patch)
        .into_iter()
        .find(|(name, _)| name == "encryption-provider-config")
        .map(|(_, value)| value)
        .expect("encryption-provider-config extraArg");
    let mut found = Vec::new();
    for file in [DEPLOY_DOC, ENCRYPTION_CONFIG, KUBEADM_PATCH] {
        for path in flag_values_in_text(&read(file), "--encryption-provider-config") {
            found.push((file, path));
        }
    }
    assert!(found.iter().any(|(file, _)| *file == DEPLOY_DOC));
    assert!(found.iter().any(|(file, _)| *file == ENCRYPTION_CONFIG));
    for (file, path) in found {
        assert_eq!(
            path, from_kubeadm,
            "{file} names the EncryptionConfiguration at {path}"
        );
    }
}

#[test]
fn image_is_the_one_tools_image_makes_and_the_same_everywhere() {
    let pod = static_pod();
    let plugin_image = text_at(STATIC_POD, static_pod_container(&pod), "image");
    let cronjob = cronjob();
    let job_image = text_at(
        CRONJOB,
        &cronjob,
        "spec.jobTemplate.spec.template.spec.containers.0.image",
    );
    assert_eq!(plugin_image, job_image);
    assert_eq!(
        plugin_image,
        format!("localhost/kube-kms:{}", env!("CARGO_PKG_VERSION")),
        "the tag tools/image gives the image"
    );
}

// ---------------------------------------------------------------------------
// etcd-inspect-cronjob.yaml and etcd-inspect-backup-check.sh
// ---------------------------------------------------------------------------

fn cronjob() -> Value {
    yaml_documents(CRONJOB)
        .into_iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some("CronJob"))
        .expect("a CronJob document")
}

/// The CronJob's pod spec, its init container (picks the newest backup) and
/// its container (scans it).
fn cronjob_pod(cronjob: &Value) -> (&Value, &Value, &Value) {
    let pod = at(CRONJOB, cronjob, "spec.jobTemplate.spec.template.spec");
    let init = list_at(CRONJOB, pod, "initContainers");
    assert_eq!(init.len(), 1, "one init container: select-backup");
    let containers = list_at(CRONJOB, pod, "containers");
    assert_eq!(containers.len(), 1);
    (pod, &init[0], &containers[0])
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    list_at(CRONJOB, container, "env")
        .iter()
        .map(|e| {
            (
                text_at(CRONJOB, e, "name").to_owned(),
                text_at(CRONJOB, e, "value").to_owned(),
            )
        })
        .collect()
}

fn env_value(env: &[(String, String)], name: &str) -> String {
    env.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{CRONJOB}: env {name} missing"))
}

/// Runs the init container's selection (its `sh -c` script, with `sh` here)
/// on `backup_dir`, linking the choice at `selected`; returns (exit code, stderr).
fn run_cronjob_selection(backup_dir: &Path, selected: &Path) -> (i32, String) {
    let cronjob = cronjob();
    let (_, init, _) = cronjob_pod(&cronjob);
    let command = strings(CRONJOB, list_at(CRONJOB, init, "command"));
    assert_eq!(command[..2], ["/bin/sh", "-c"], "{command:?}");
    let env = env_of(init);
    let output = Command::new("sh")
        .arg("-c")
        .arg(&command[2])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("BACKUP_DIR", backup_dir)
        .env("BACKUP_PATTERN", env_value(&env, "BACKUP_PATTERN"))
        .env("SELECTED", selected)
        .output()
        .expect("run the CronJob's selection with sh");
    (
        output.status.code().expect("exited"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn cronjob_selection_links_the_newest_backup_and_fails_without_one() {
    let links = tempfile::tempdir().expect("tempdir");
    let selected = links.path().join("newest.db");
    for (oldest_first, newest) in [
        (["plaintext.db", "kmsv2-rotated.db"], "kmsv2-rotated.db"),
        (["kmsv2-rotated.db", "plaintext.db"], "plaintext.db"),
    ] {
        let backups = backup_dir_with(&oldest_first);
        std::fs::write(backups.path().join("notes.txt"), "not a backup").expect("write");
        let (code, stderr) = run_cronjob_selection(backups.path(), &selected);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            std::fs::read_link(&selected).expect("a link"),
            backups.path().join(newest),
            "{stderr}"
        );
        // The scan container's verdict on the link is the backup's.
        let scan = Command::new(etcd_inspect())
            .args(["scan", "--require-provider", "kms-v2:fixture-kms", "--file"])
            .arg(&selected)
            .output()
            .expect("scan");
        let expected = if newest == "plaintext.db" { 1 } else { 0 };
        assert_eq!(scan.status.code(), Some(expected), "{newest}");
    }
    let empty = tempfile::tempdir().expect("tempdir");
    std::fs::write(empty.path().join("notes.txt"), "not a backup").expect("write");
    let (code, stderr) = run_cronjob_selection(empty.path(), &links.path().join("none.db"));
    assert_eq!(code, 2, "no backup fails the Job: {stderr}");
    assert!(stderr.contains("no backup matching '*.db'"), "{stderr}");
}

#[test]
fn cronjob_fails_on_findings_and_reads_backups_read_only() {
    let cronjob = cronjob();
    assert_eq!(text_at(CRONJOB, &cronjob, "apiVersion"), "batch/v1");
    assert_eq!(
        text_at(CRONJOB, &cronjob, "spec.concurrencyPolicy"),
        "Forbid"
    );
    let job = at(CRONJOB, &cronjob, "spec.jobTemplate.spec");
    assert_eq!(
        int_at(CRONJOB, job, "backoffLimit"),
        0,
        "findings are not retried away"
    );
    let (pod, init, container) = cronjob_pod(&cronjob);
    assert_eq!(text_at(CRONJOB, pod, "restartPolicy"), "Never");
    assert_eq!(
        text_at(CRONJOB, pod, "securityContext.seccompProfile.type"),
        "RuntimeDefault"
    );
    // The scan: etcd-inspect itself (the image has no shell), on the link the
    // init container made, requiring the provider; its exit code is the Job's.
    let command = strings(CRONJOB, list_at(CRONJOB, container, "command"));
    assert_eq!(command[..2], ["/usr/local/bin/etcd-inspect", "scan"]);
    let init_env = env_of(init);
    let selected = env_value(&init_env, "SELECTED");
    assert_eq!(single_flag(CRONJOB, &command, "--file"), selected);
    assert_eq!(
        single_flag(CRONJOB, &command, "--require-provider"),
        format!("kms-v2:{PROVIDER}")
    );
    for c in [init, container] {
        let security = at(CRONJOB, c, "securityContext");
        assert_eq!(
            strings(CRONJOB, list_at(CRONJOB, security, "capabilities.drop")),
            ["ALL"]
        );
        assert!(bool_at(CRONJOB, security, "readOnlyRootFilesystem"));
        assert!(!bool_at(CRONJOB, security, "allowPrivilegeEscalation"));
        for path in ["resources.requests.memory", "resources.limits.memory"] {
            at(CRONJOB, c, path);
        }
    }
    // The backup directory is mounted read-only from the node, at the same
    // path in both containers (the link points into it).
    let backup_dir = env_value(&init_env, "BACKUP_DIR");
    let mount_of = |c: &Value, path: &str| -> (String, bool) {
        let mount = list_at(CRONJOB, c, "volumeMounts")
            .iter()
            .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(path))
            .unwrap_or_else(|| panic!("{CRONJOB}: {path} is not mounted"));
        (
            text_at(CRONJOB, mount, "name").to_owned(),
            mount.get("readOnly").and_then(Value::as_bool) == Some(true),
        )
    };
    let (init_volume, init_read_only) = mount_of(init, &backup_dir);
    let (scan_volume, scan_read_only) = mount_of(container, &backup_dir);
    assert!(
        init_read_only && scan_read_only,
        "backups are mounted read-only"
    );
    assert_eq!(init_volume, scan_volume);
    let volume = list_at(CRONJOB, pod, "volumes")
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(init_volume.as_str()))
        .expect("backup volume");
    assert_eq!(text_at(CRONJOB, volume, "hostPath.path"), backup_dir);
    let selected_dir = parent_dir(&selected);
    let (link_volume, _) = mount_of(init, &selected_dir);
    let (scan_link_volume, link_read_only) = mount_of(container, &selected_dir);
    assert_eq!(link_volume, scan_link_volume);
    assert!(link_read_only, "the scan only reads the link");
    // The script's defaults match what the Job uses.
    let script = read(BACKUP_SCRIPT);
    assert!(
        script.contains(&format!("${{BACKUP_DIR:-{backup_dir}}}")),
        "script default BACKUP_DIR"
    );
    assert!(script.contains(&format!(
        "${{BACKUP_PATTERN:-{}}}",
        env_value(&init_env, "BACKUP_PATTERN")
    )));
}

#[test]
fn backup_check_script_is_strict_bash_and_shellcheck_clean() {
    let script = read(BACKUP_SCRIPT);
    assert!(script.starts_with("#!/usr/bin/env bash\n"));
    assert!(script.contains("\nset -euo pipefail\n"));
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(repo_path(BACKUP_SCRIPT))
        .output()
        .expect("run bash -n");
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    match Command::new("shellcheck")
        .arg(repo_path(BACKUP_SCRIPT))
        .output()
    {
        Ok(lint) => assert!(
            lint.status.success(),
            "shellcheck findings:\n{}",
            String::from_utf8_lossy(&lint.stdout)
        ),
        Err(_) => eprintln!("SKIPPED shellcheck: not installed (apt-get install shellcheck)"),
    }
}

/// Runs the backup check script with `settings` as its environment (nothing else
/// inherited but PATH) and returns (exit code, stderr).
fn run_backup_check(settings: &[(&str, &Path)]) -> (i32, String) {
    let mut command = Command::new("bash");
    command.arg(repo_path(BACKUP_SCRIPT)).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    for (name, value) in settings {
        command.env(name, value);
    }
    let output = command.output().expect("run the backup check script");
    let code = output.status.code().expect("script exited, not killed");
    (code, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn backup_check_exits_2_when_there_is_no_backup() {
    let backups = tempfile::tempdir().expect("tempdir");
    std::fs::write(backups.path().join("notes.txt"), "not a backup").expect("write");
    let binary = Path::new(env!("CARGO_BIN_EXE_etcd-inspect"));
    let (code, stderr) =
        run_backup_check(&[("BACKUP_DIR", backups.path()), ("ETCD_INSPECT", binary)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no backup matching '*.db'"), "{stderr}");

    let missing = backups.path().join("does-not-exist");
    let (code, stderr) = run_backup_check(&[("BACKUP_DIR", &missing), ("ETCD_INSPECT", binary)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn backup_check_exits_2_when_etcd_inspect_is_missing() {
    let backups = tempfile::tempdir().expect("tempdir");
    std::fs::write(backups.path().join("snapshot.db"), b"").expect("write");
    let missing = backups.path().join("no-etcd-inspect-here");
    let (code, stderr) =
        run_backup_check(&[("BACKUP_DIR", backups.path()), ("ETCD_INSPECT", &missing)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not found or not executable"), "{stderr}");
}

/// A backup directory holding copies of real kube-apiserver snapshots, `newest`
/// last by modification time.
fn backup_dir_with(fixtures_oldest_first: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/apiserver");
    let now = std::time::SystemTime::now();
    let count = fixtures_oldest_first.len() as u64;
    for (age_rank, name) in fixtures_oldest_first.iter().enumerate() {
        let target = dir.path().join(name);
        std::fs::copy(fixtures.join(name), &target)
            .unwrap_or_else(|e| panic!("copy fixture {name}: {e}"));
        let age = std::time::Duration::from_secs(3600 * (count - age_rank as u64));
        std::fs::File::options()
            .write(true)
            .open(&target)
            .and_then(|file| file.set_modified(now - age))
            .expect("set mtime");
    }
    dir
}

fn etcd_inspect() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_etcd-inspect"))
}

#[test]
fn backup_check_scans_only_the_newest_backup_and_passes_on_its_verdict() {
    // plaintext.db (kube-apiserver with identity only) is older than
    // kmsv2-rotated.db (kube-apiserver with the KMS v2 provider `fixture-kms`).
    let plaintext_older = backup_dir_with(&["plaintext.db", "kmsv2-rotated.db"]);
    let fixture_provider = Path::new("kms-v2:fixture-kms");
    let (code, stderr) = run_backup_check(&[
        ("BACKUP_DIR", plaintext_older.path()),
        ("ETCD_INSPECT", etcd_inspect()),
        ("REQUIRE_PROVIDER", fixture_provider),
    ]);
    assert_eq!(code, 0, "the newest backup is all under kms v2: {stderr}");
    assert!(stderr.contains("kmsv2-rotated.db is clean"), "{stderr}");

    let plaintext_newer = backup_dir_with(&["kmsv2-rotated.db", "plaintext.db"]);
    let (code, stderr) = run_backup_check(&[
        ("BACKUP_DIR", plaintext_newer.path()),
        ("ETCD_INSPECT", etcd_inspect()),
        ("REQUIRE_PROVIDER", fixture_provider),
    ]);
    assert_eq!(
        code, 1,
        "the newest backup holds plaintext Secrets: {stderr}"
    );
    assert!(
        stderr.contains("FINDINGS: ") && stderr.contains("plaintext.db"),
        "{stderr}"
    );
}

#[test]
fn backup_check_defaults_require_the_kube_kms_provider() {
    // All KMS v2, but under another provider name: the default (kms-v2:kube-kms)
    // reports it.
    let backups = backup_dir_with(&["kmsv2-rotated.db"]);
    let (code, stderr) = run_backup_check(&[
        ("BACKUP_DIR", backups.path()),
        ("ETCD_INSPECT", etcd_inspect()),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not under kms-v2:kube-kms"), "{stderr}");
}

#[test]
fn backup_check_reports_key_ids_outside_the_allowed_list() {
    // The fixture holds 12 Secrets under key-A and 12 under key-B.
    let backups = backup_dir_with(&["kmsv2-rotated.db"]);
    let run = |allowed: &str| {
        let allowed = Path::new(allowed);
        run_backup_check(&[
            ("BACKUP_DIR", backups.path()),
            ("ETCD_INSPECT", etcd_inspect()),
            ("REQUIRE_PROVIDER", Path::new("kms-v2:fixture-kms")),
            ("ALLOWED_KEY_IDS", allowed),
            ("OUTPUT_FORMAT", Path::new("json")),
        ])
    };
    let (code, stderr) = run("key-B");
    assert_eq!(code, 1, "key-A is not allowed: {stderr}");
    let (code, stderr) = run("key-A,key-B");
    assert_eq!(code, 0, "both key_ids allowed: {stderr}");
}

#[test]
fn backup_check_exits_2_when_the_newest_backup_is_unreadable() {
    let backups = backup_dir_with(&["kmsv2-rotated.db"]);
    std::fs::write(backups.path().join("zz-truncated.db"), b"not a bbolt file").expect("write");
    let (code, stderr) = run_backup_check(&[
        ("BACKUP_DIR", backups.path()),
        ("ETCD_INSPECT", etcd_inspect()),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("ERROR: etcd-inspect could not scan"),
        "{stderr}"
    );
    assert!(stderr.contains("zz-truncated.db"), "{stderr}");
}

// ---------------------------------------------------------------------------
// The flags the manifests pass exist in the real binary
// ---------------------------------------------------------------------------

/// The `kube-kms serve` arguments of the static pod and of the systemd unit.
fn serve_args_by_file() -> Vec<(&'static str, Vec<String>)> {
    let pod_args = static_pod_args(&static_pod());
    let unit_args = SystemdUnit::load().exec_start_args();
    [(STATIC_POD, pod_args), (SYSTEMD_UNIT, unit_args)]
        .into_iter()
        .map(|(file, args)| {
            let serve_at = args
                .iter()
                .position(|a| a == "serve")
                .unwrap_or_else(|| panic!("{file}: no `serve` subcommand"));
            (file, args[serve_at + 1..].to_vec())
        })
        .collect()
}

#[test]
fn manifest_flags_are_accepted_by_kube_kms_serve() {
    let help = Command::new(env!("CARGO_BIN_EXE_kube-kms"))
        .args(["serve", "--help"])
        .output()
        .expect("run kube-kms serve --help");
    assert!(help.status.success(), "kube-kms serve --help failed");
    let help = String::from_utf8_lossy(&help.stdout);
    for (file, args) in serve_args_by_file() {
        for arg in args.iter().filter(|a| a.starts_with("--")) {
            let flag = arg.split('=').next().unwrap_or(arg);
            assert!(
                help.contains(&format!("{flag} ")),
                "{file} passes {flag}, which `kube-kms serve --help` does not list:\n{help}"
            );
        }
        // The exact argument vector parses (flag names and values, e.g. the log
        // format): clap rejects a bad argument before it reaches --help.
        let parsed = Command::new(env!("CARGO_BIN_EXE_kube-kms"))
            .arg("serve")
            .args(&args)
            .arg("--help")
            .output()
            .expect("run kube-kms serve ARGS --help");
        assert!(
            parsed.status.success(),
            "{file}: kube-kms serve rejects {args:?}: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
    }
}

//! Rotation on an HA control plane (issue 9): three real `kube-kms serve`
//! processes, each with its own keyring file started from one exported bundle,
//! and a client playing three kube-apiservers. Each apiserver Encrypts through
//! its own node and Decrypts what any apiserver wrote through the other nodes,
//! continuously, while the test rotates the key:
//!
//! - staged (add, export, import everywhere, `key check`, promote on node 1 then
//!   the others, migrate, disable, destroy): zero failed Decrypts;
//! - promote on node 1 before the others hold the key: `key check` says so
//!   beforehand (exit 1), `promote --require-peers` refuses, and once promoted
//!   anyway, Decrypts fail at the other nodes.
use crate::common::plugin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret as _;
use kube_kms::client::KmsClient;
use plugin::{temp_dir, wait_for_key_id, ServeProcess, KUBE_KMS};

const RELOAD_POLL: &str = "100ms";
const WAIT: Duration = Duration::from_secs(15);

/// The binary for `key` commands: cargo's, unless `KUBE_KMS_TEST_BIN` names
/// another build (the shared target dir may hold another branch's binary).
fn binary() -> String {
    std::env::var("KUBE_KMS_TEST_BIN").unwrap_or_else(|_| KUBE_KMS.to_owned())
}

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run kube-kms")
}

fn run_ok(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "kube-kms {args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// One control-plane node: its keyring, its age identity, its plugin.
struct Node {
    dir: tempfile::TempDir,
    keyring: PathBuf,
    identity: PathBuf,
    recipient: String,
    server: Option<ServeProcess>,
}

impl Node {
    fn new() -> Self {
        let dir = temp_dir();
        let identity = age::x25519::Identity::generate();
        let identity_path = dir.path().join("node.agekey");
        std::fs::write(
            &identity_path,
            format!(
                "# created: test\n{}\n",
                identity.to_string().expose_secret()
            ),
        )
        .expect("write identity");
        Self {
            keyring: dir.path().join("keyring.json"),
            recipient: identity.to_public().to_string(),
            identity: identity_path,
            dir,
            server: None,
        }
    }

    fn address(&self) -> String {
        format!("unix://{}", self.dir.path().join("kms.sock").display())
    }

    async fn start(&mut self) {
        self.server = Some(
            ServeProcess::start(
                self.dir.path(),
                &self.keyring,
                &["--reload-poll-interval", RELOAD_POLL],
            )
            .await,
        );
    }

    async fn client(&self) -> KmsClient {
        KmsClient::connect(self.address()).await.expect("connect")
    }

    fn key(&self, args: &[&str]) -> String {
        let mut all = vec!["key"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--keyring", path_str(&self.keyring)]);
        run_ok(&all)
    }

    fn key_output(&self, args: &[&str]) -> Output {
        let mut all = vec!["key"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--keyring", path_str(&self.keyring)]);
        run(&all)
    }

    /// Exports `version` to a bundle for `to`, which imports it.
    fn send_to(&self, to: &Node, version: &str) {
        let bundle = self
            .dir
            .path()
            .join(format!("v{version}-{}.age", rand_suffix()));
        self.key(&[
            "export",
            version,
            "--out",
            path_str(&bundle),
            "--recipient",
            &to.recipient,
        ]);
        // The fingerprint `export` printed, as an operator carries it.
        let unlock = kube_kms::keyring::bundle::Unlock::identity_file(&to.identity)
            .expect("the node's identity");
        let opened =
            kube_kms::keyring::bundle::open_file(&bundle, &unlock).expect("open the bundle");
        let fingerprint = opened.fingerprint().to_owned();
        let mut args = vec![
            "import",
            path_str(&bundle),
            "--identity",
            path_str(&to.identity),
            "--expect-fingerprint",
            &fingerprint,
        ];
        // A new node's keyring starts with the exporter's primary.
        let primary = opened.primary_at_export().map(|id| id.to_string());
        if let (false, Some(primary)) = (to.keyring.exists(), primary.as_deref()) {
            args.extend(["--set-primary", primary]);
        }
        to.key(&args);
        std::fs::remove_file(&bundle).expect("remove bundle");
    }

    fn check(&self, peers: &[&Node]) -> Output {
        let addresses: Vec<String> = peers.iter().map(|p| p.address()).collect();
        let mut args = vec!["check"];
        for address in &addresses {
            args.push("--peer");
            args.push(address);
        }
        self.key_output(&args)
    }

    fn key_id(&self, version: u32) -> String {
        let listed: serde_json::Value =
            serde_json::from_str(&self.key(&["list", "--format", "json"])).expect("list json");
        listed["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .find(|v| v["id"] == version)
            .and_then(|v| v["key_id"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no version {version}"))
    }
}

fn rand_suffix() -> String {
    let mut bytes = [0u8; 4];
    getrandom::getrandom(&mut bytes).expect("random");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Three nodes: node 1 inits, exports v1 to nodes 2 and 3, which create their
/// keyrings from the bundle; then all three serve.
async fn cluster() -> Vec<Node> {
    let mut nodes = vec![Node::new(), Node::new(), Node::new()];
    run_ok(&["key", "init", "--keyring", path_str(&nodes[0].keyring)]);
    nodes[0].send_to(&nodes[1], "1");
    nodes[0].send_to(&nodes[2], "1");
    let v1 = nodes[0].key_id(1);
    for node in &mut nodes {
        assert_eq!(node.key_id(1), v1);
        node.start().await;
    }
    for node in &nodes {
        wait_for_key_id(&mut node.client().await, &v1, WAIT).await;
    }
    nodes
}

/// A seed one apiserver wrote, as its object would hold it in etcd.
#[derive(Clone)]
struct Stored {
    seed: Vec<u8>,
    ciphertext: Vec<u8>,
    key_id: String,
    writer: usize,
}

#[derive(Default)]
struct Traffic {
    stored: Mutex<Vec<Stored>>,
    stop: AtomicBool,
    encrypts: AtomicU64,
    decrypts: AtomicU64,
    rounds: AtomicU64,
    /// (decrypting node, key_id, gRPC status) of every failed Decrypt.
    failures: Mutex<Vec<(usize, String, String)>>,
}

fn pick(bound: usize) -> usize {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).expect("random");
    (u64::from_le_bytes(bytes) % bound as u64) as usize
}

/// Plays three apiservers until `stop` (or a bound of 20 000 rounds).
async fn apiservers(nodes: Vec<String>, traffic: Arc<Traffic>) {
    let mut clients = Vec::new();
    for address in &nodes {
        clients.push(KmsClient::connect(address).await.expect("connect"));
    }
    let count = clients.len();
    for round in 0..20_000u64 {
        if traffic.stop.load(Ordering::SeqCst) {
            break;
        }
        for me in 0..count {
            // Write: Status then Encrypt through my own node, as apiserver does
            // (it discards an Encrypt whose key_id differs from Status').
            let client = &mut clients[me];
            let status = client.status().await.expect("Status");
            let seed = plugin::seed();
            let encrypted = client.encrypt(&seed, "write").await.expect("Encrypt");
            traffic.encrypts.fetch_add(1, Ordering::SeqCst);
            if encrypted.key_id == status.key_id {
                traffic.stored.lock().unwrap().push(Stored {
                    seed,
                    ciphertext: encrypted.ciphertext,
                    key_id: encrypted.key_id,
                    writer: me,
                });
            }
            // Read: any stored object, through another node.
            let object = {
                let stored = traffic.stored.lock().unwrap();
                if stored.is_empty() {
                    continue;
                }
                stored[pick(stored.len())].clone()
            };
            let reader = (me + 1 + pick(count - 1)) % count;
            let result = clients[reader]
                .decrypt(
                    &object.ciphertext,
                    &object.key_id,
                    &Default::default(),
                    "read",
                )
                .await;
            traffic.decrypts.fetch_add(1, Ordering::SeqCst);
            match result {
                Ok(plaintext) => assert_eq!(plaintext.expose_secret(), &object.seed[..]),
                Err(error) => traffic.failures.lock().unwrap().push((
                    reader,
                    object.key_id.clone(),
                    error.to_string(),
                )),
            }
        }
        traffic.rounds.store(round + 1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn wait_rounds(traffic: &Traffic, more: u64) {
    let target = traffic.rounds.load(Ordering::SeqCst) + more;
    let deadline = Instant::now() + WAIT;
    while traffic.rounds.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "traffic stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_check(node: &Node, peers: &[&Node], code: i32) -> String {
    wait_check_for(node, peers, code, |_| true).await
}

/// Runs `key check` until it exits `code` with a report `accept` likes (the
/// plugins reload their keyrings asynchronously).
async fn wait_check_for(
    node: &Node,
    peers: &[&Node],
    code: i32,
    accept: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let output = node.check(peers);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.code() == Some(code) && accept(&stdout) {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "key check never exited {code}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node` refuses to decrypt `probe` (its key_id was disabled there).
async fn wait_refused(node: &Node, probe: &Stored) {
    let mut client = node.client().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let result = client
            .decrypt(
                &probe.ciphertext,
                &probe.key_id,
                &Default::default(),
                "probe",
            )
            .await;
        match result {
            Err(error) if error.to_string().contains("disabled") => return,
            _ => {}
        }
        assert!(Instant::now() < deadline, "{} never disabled", probe.key_id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn destroy_args(version: &str) -> Vec<&str> {
    // Another change adds a scan-report gate to `key destroy`; this test has no
    // etcd to scan, so it uses the override when the gate exists.
    let help = run_ok(&["key", "destroy", "--help"]);
    if help.contains("--force") {
        vec!["destroy", version, "--force"]
    } else {
        vec!["destroy", version]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staged_rotation_across_three_nodes_never_fails_a_decrypt() {
    let nodes = cluster().await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let v1 = n1.key_id(1);
    let traffic = Arc::new(Traffic::default());
    let load = tokio::spawn(apiservers(
        nodes.iter().map(Node::address).collect(),
        Arc::clone(&traffic),
    ));
    wait_rounds(&traffic, 20).await;
    // A v1 object kept aside to probe when v1 is disabled.
    let probe = traffic.stored.lock().unwrap()[0].clone();
    assert_eq!(probe.key_id, v1);

    // 1. Add on node 1: enabled, not primary; nothing changes for the apiservers.
    n1.key(&["add"]);
    let v2 = n1.key_id(2);
    // Only node 1 holds v2: the check says so.
    let not_yet = wait_check(n1, &[n1, n2, n3], 1).await;
    assert!(
        not_yet.contains("missing") && not_yet.contains(&v2),
        "{not_yet}"
    );
    // 2. Distribute.
    n1.send_to(n2, "2");
    n1.send_to(n3, "2");
    for node in &nodes {
        assert_eq!(node.key_id(2), v2, "same key_id (fingerprint) everywhere");
    }
    // 3. Check: every node decrypts under v1 and v2.
    let agreed = wait_check(n1, &[n1, n2, n3], 0).await;
    assert!(
        agreed.starts_with("peers:") && agreed.contains("OK"),
        "{agreed}"
    );
    wait_rounds(&traffic, 10).await;

    // 4. Promote on node 1 (refusing unless the peers hold v2), then the others.
    let peers: Vec<String> = [n2, n3].iter().map(|n| n.address()).collect();
    n1.key(&[
        "promote",
        "2",
        "--peer",
        &peers[0],
        "--peer",
        &peers[1],
        "--require-peers",
    ]);
    wait_for_key_id(&mut n1.client().await, &v2, WAIT).await;
    wait_rounds(&traffic, 20).await; // node 1 writes v2, nodes 2 and 3 read it
    n2.key(&["promote", "2"]);
    n3.key(&["promote", "2"]);
    // 5. Wait for every node (so every apiserver) to report the new key_id.
    for node in &nodes {
        wait_for_key_id(&mut node.client().await, &v2, WAIT).await;
    }
    wait_rounds(&traffic, 5).await;

    // 6. Migrate: rewrite every object still under v1 through its writer's node.
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.client().await);
    }
    let old: Vec<(usize, Stored)> = traffic
        .stored
        .lock()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.key_id == v1)
        .map(|(i, s)| (i, s.clone()))
        .collect();
    assert!(old.len() >= 20, "only {} v1 objects", old.len());
    for (index, object) in &old {
        let client = &mut clients[object.writer];
        let plaintext = client
            .decrypt(
                &object.ciphertext,
                &object.key_id,
                &Default::default(),
                "migrate",
            )
            .await
            .expect("migration read");
        let encrypted = client
            .encrypt(plaintext.expose_secret(), "migrate")
            .await
            .expect("migration write");
        assert_eq!(encrypted.key_id, v2);
        traffic.stored.lock().unwrap()[*index] = Stored {
            seed: object.seed.clone(),
            ciphertext: encrypted.ciphertext,
            key_id: encrypted.key_id,
            writer: object.writer,
        };
    }
    // Verify: nothing stored is under v1 (the `etcd-inspect` step in production).
    assert!(traffic
        .stored
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.key_id == v2));
    // Let reads that picked an object before its rewrite finish.
    wait_rounds(&traffic, 3).await;

    // 7. Disable v1 everywhere; wait until each node refuses it.
    for node in &nodes {
        node.key(&["disable", "1"]);
        wait_refused(node, &probe).await;
    }
    wait_rounds(&traffic, 20).await;
    // 8. Destroy v1 everywhere.
    for node in &nodes {
        node.key(&destroy_args("1"));
        let listed = node.key(&["list"]);
        assert!(listed.contains("destroyed"), "{listed}");
    }
    wait_rounds(&traffic, 20).await;
    // The check agrees on the final state.
    wait_check(n2, &[n1, n2, n3], 0).await;

    traffic.stop.store(true, Ordering::SeqCst);
    load.await.expect("apiservers");
    let failures = traffic.failures.lock().unwrap().clone();
    let decrypts = traffic.decrypts.load(Ordering::SeqCst);
    let encrypts = traffic.encrypts.load(Ordering::SeqCst);
    eprintln!(
        "staged rotation: {encrypts} Encrypts, {decrypts} cross-node Decrypts, {} failed",
        failures.len()
    );
    assert!(decrypts >= 300, "too little traffic: {decrypts}");
    assert!(
        failures.is_empty(),
        "{} failed Decrypts, first: {:?}",
        failures.len(),
        failures.first()
    );
    for node in &nodes {
        let log = node.server.as_ref().expect("server").stderr();
        assert!(!log.contains("ERROR"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promoting_on_one_node_first_breaks_reads_elsewhere_and_check_catches_it() {
    let nodes = cluster().await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let traffic = Arc::new(Traffic::default());
    let load = tokio::spawn(apiservers(
        nodes.iter().map(Node::address).collect(),
        Arc::clone(&traffic),
    ));
    wait_rounds(&traffic, 20).await;
    n1.key(&["add"]);
    let v2 = n1.key_id(2);

    // Beforehand: the check says nodes 2 and 3 lack v2 (exit 1), naming them
    // (once node 1's own plugin has reloaded and holds it).
    let report = wait_check_for(n1, &[n1, n2, n3], 1, |report| {
        report
            .lines()
            .any(|l| l.trim_start().starts_with(&v2) && l.contains("[1] ok"))
    })
    .await;
    assert!(report.contains("NOT IN STEP"), "{report}");
    let v2_line = report
        .lines()
        .find(|l| l.trim_start().starts_with(&v2))
        .unwrap_or_else(|| panic!("no line for {v2}: {report}"));
    assert!(
        v2_line.contains("[1] ok")
            && v2_line.contains("[2] missing")
            && v2_line.contains("[3] missing"),
        "{report}"
    );
    // promote --require-peers refuses and changes nothing.
    let before = std::fs::read(&n1.keyring).expect("read keyring");
    let (p2, p3) = (n2.address(), n3.address());
    let refused = n1.key_output(&[
        "promote",
        "2",
        "--peer",
        &p2,
        "--peer",
        &p3,
        "--require-peers",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refusing") && stderr.contains(&p2),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&n1.keyring).expect("read keyring"), before);
    // Without --require-peers it warns, then promotes.
    let warned = n1.key_output(&["promote", "2", "--peer", &p2]);
    assert!(warned.status.success());
    assert!(
        String::from_utf8_lossy(&warned.stderr).contains("warning: peer"),
        "{}",
        String::from_utf8_lossy(&warned.stderr)
    );
    wait_for_key_id(&mut n1.client().await, &v2, WAIT).await;
    wait_rounds(&traffic, 100).await;

    traffic.stop.store(true, Ordering::SeqCst);
    load.await.expect("apiservers");
    let failures = traffic.failures.lock().unwrap().clone();
    eprintln!(
        "unstaged promote: {} cross-node Decrypts, {} failed",
        traffic.decrypts.load(Ordering::SeqCst),
        failures.len()
    );
    assert!(
        failures.len() >= 10,
        "expected failed reads, got {}",
        failures.len()
    );
    for (reader, key_id, error) in &failures {
        assert!(*reader != 0, "node 1 holds v2 and must not fail: {error}");
        assert_eq!(key_id, &v2);
        assert!(error.contains("unknown key_id"), "{error}");
    }
    // After the fact, the check still says so (and names v2 as primary somewhere).
    let after = wait_check(n2, &[n1, n2, n3], 1).await;
    assert!(after.contains("MISSING LOCALLY"), "{after}");
}

//! `etcd-inspect`: audits etcd and etcd backups for plaintext Secrets.
fn main() {
    eprintln!("etcd-inspect: not built yet");
    std::process::exit(2);
}

//! `etcd-inspect`: audits etcd and etcd backups for plaintext Secrets. (Being written.)
fn main() -> std::process::ExitCode {
    eprintln!("etcd-inspect: not built yet");
    std::process::ExitCode::from(2)
}

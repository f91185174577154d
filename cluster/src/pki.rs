//! The lab's TLS material: a CA of its own, a certificate per host for its agent, a client
//! certificate for the driver, and the shared agent token, all in one directory.
//!
//! The agent speaks only TLS and asks every caller for a client certificate signed by the lab's
//! CA *and* the token: a plaintext call, a caller with another CA's certificate, or a wrong token
//! are all refused. Private keys and the token are written owner-only (0600). Creating the
//! material again keeps what exists (the CA above all, which every host already trusts) and adds
//! only the certificates of hosts that have none, so provisioning twice changes nothing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why TLS material or a secret could not be made or read: the file and what failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PkiError {
    /// The file (or what was being made).
    pub path: String,
    /// What failed.
    pub reason: String,
}

/// File names inside a PKI directory.
pub const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
/// The driver's client certificate and key.
pub const DRIVER_CERT: &str = "driver.pem";
/// The driver's key.
pub const DRIVER_KEY: &str = "driver.key";
/// The shared agent token.
pub const TOKEN: &str = "agent.token";
/// The Postgres superuser's password (Ansible's Patroni role and the driver read it).
pub const PG_SUPERUSER_PASSWORD: &str = "postgres-superuser.password";
/// Every random secret the directory holds: the token and Patroni's three passwords.
const SECRETS: [&str; 4] = [
    TOKEN,
    PG_SUPERUSER_PASSWORD,
    "postgres-replication.password",
    "postgres-rewind.password",
];

/// The files of one host's agent certificate, `hosts/NAME.pem` and `hosts/NAME.key`.
pub fn host_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let hosts = dir.join("hosts");
    (
        hosts.join(format!("{name}.pem")),
        hosts.join(format!("{name}.key")),
    )
}

fn pki_err(what: &str, e: impl std::fmt::Display) -> PkiError {
    PkiError {
        path: what.to_string(),
        reason: e.to_string(),
    }
}

/// Writes a file only its owner may read (keys, tokens, passwords, `lab.json`).
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|e| pki_err(&path.display().to_string(), e))
}

/// A random hex string of 32 characters (tokens, lab passwords), from the kernel's generator.
pub fn random_token() -> Result<String, PkiError> {
    let mut buf = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| pki_err("/dev/urandom", e))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| pki_err(&path.display().to_string(), e))
}

/// Makes (or completes) the PKI in `dir` for `hosts` (name and address); returns how many
/// certificates it issued (0 when everything was there).
pub fn ensure(dir: &Path, hosts: &[(String, IpAddr)]) -> Result<usize, PkiError> {
    let mut issued = 0;
    std::fs::create_dir_all(dir.join("hosts"))
        .map_err(|e| pki_err(&dir.display().to_string(), e))?;
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if !ca_cert.exists() || !ca_key.exists() {
        let key = KeyPair::generate().map_err(|e| pki_err("CA key", e))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| pki_err("CA", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "quorumlab lab CA");
        let cert = params.self_signed(&key).map_err(|e| pki_err("CA", e))?;
        write_secret(&ca_key, key.serialize_pem().as_bytes())?;
        std::fs::write(&ca_cert, cert.pem()).map_err(|e| pki_err(CA_CERT, e))?;
    }
    let key = KeyPair::from_pem(&read(&ca_key)?).map_err(|e| pki_err(CA_KEY, e))?;
    let issuer =
        Issuer::from_ca_cert_pem(&read(&ca_cert)?, key).map_err(|e| pki_err(CA_CERT, e))?;
    let driver = (dir.join(DRIVER_CERT), dir.join(DRIVER_KEY));
    if !driver.0.exists() || !driver.1.exists() {
        issue(&issuer, "quorumlab-driver", &[], &driver)?;
        issued += 1;
    }
    for (name, addr) in hosts {
        let files = host_files(dir, name);
        if !files.0.exists() || !files.1.exists() {
            issue(&issuer, name, &[*addr], &files)?;
            issued += 1;
        }
    }
    for secret in SECRETS {
        let file = dir.join(secret);
        if !file.exists() {
            write_secret(&file, random_token()?.as_bytes())?;
        }
    }
    Ok(issued)
}

/// Issues a certificate for `name` (and its addresses) signed by the lab's CA.
fn issue(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    addrs: &[IpAddr],
    (cert_file, key_file): &(PathBuf, PathBuf),
) -> Result<(), PkiError> {
    let key = KeyPair::generate().map_err(|e| pki_err(name, e))?;
    let mut params =
        CertificateParams::new(vec![name.to_string()]).map_err(|e| pki_err(name, e))?;
    params
        .subject_alt_names
        .extend(addrs.iter().map(|a| SanType::IpAddress(*a)));
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| pki_err(name, e))?;
    write_secret(key_file, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_file, cert.pem()).map_err(|e| pki_err(&cert_file.display().to_string(), e))
}

/// Makes aws-lc the process's TLS crypto provider, once. Why: the binary links two providers
/// (other crates bring ring), and rustls then refuses to pick one by itself.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// What the driver needs to call agents: the CA to trust, its own identity, and the token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DriverTls {
    /// The lab CA, PEM.
    pub ca_pem: String,
    /// The driver's certificate, PEM.
    pub cert_pem: String,
    /// The driver's key, PEM.
    pub key_pem: String,
    /// The agent token.
    pub token: String,
}

impl DriverTls {
    /// Reads the driver's material from a PKI directory.
    pub fn load(dir: &Path) -> Result<DriverTls, PkiError> {
        Ok(DriverTls {
            ca_pem: read(&dir.join(CA_CERT))?,
            cert_pem: read(&dir.join(DRIVER_CERT))?,
            key_pem: read(&dir.join(DRIVER_KEY))?,
            token: read(&dir.join(TOKEN))?.trim().to_string(),
        })
    }
}

//! The cluster's certificate authority: `flotilla certs init` makes it, with a certificate
//! for each role and the first admin token; `flotilla certs issue` signs a new certificate
//! for a role (rotation) with the same CA.
//!
//! A certificate's role is a DNS name in it (`master.flotilla`, …), the way Nomad names its
//! servers `server.<region>.nomad`: Flotilla's own clients verify a master by that name, not
//! by the address they dialled, so masters can move and be added without new certificates.
//! The master certificate also names the `--hosts` given, for curl and browsers.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{Role, TlsError};

/// The files of a certificates directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const ADMIN_TOKEN: &str = "admin.token";

/// How long certificates last. Leaf certificates are renewed with `certs issue`, which the
/// running members pick up without a restart.
const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 365;

/// What `init` wrote.
#[derive(Debug)]
pub struct Created {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

/// The CA's subject: fixed, so the CA can sign again from its key alone.
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(TlsError::Generate)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Flotilla");
    name.push(DnType::CommonName, "Flotilla cluster CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(now_secs());
    // An hour back: a member whose clock is a little behind still accepts a new certificate.
    params.not_before = now - std::time::Duration::from_secs(3600);
    params.not_after = now + std::time::Duration::from_secs(days as u64 * 86_400);
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Creates a new CA, a certificate for each role, and the first admin token in `dir`.
/// Refuses to replace an existing CA: every member's certificate would stop being trusted.
pub fn init(dir: &Path, hosts: &[String]) -> Result<Created, TlsError> {
    let ca_cert_path = dir.join(CA_CERT);
    if ca_cert_path.exists() {
        return Err(TlsError::Exists { path: ca_cert_path });
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.to_path_buf(), source })?;
    let ca_key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut params = ca_params()?;
    validity(&mut params, CA_DAYS);
    let ca_cert = params.self_signed(&ca_key).map_err(TlsError::Generate)?;
    let mut files = Vec::new();
    files.push(write_private(&dir.join(CA_KEY), ca_key.serialize_pem().as_bytes())?);
    let issuer = Issuer::new(ca_params()?, ca_key);
    for role in Role::ALL {
        files.extend(write_leaf(dir, role, hosts, &issuer)?);
    }
    files.push(write_public(&ca_cert_path, ca_cert.pem().as_bytes())?);
    files.push(write_private(&dir.join(ADMIN_TOKEN), format!("{}\n", new_token()?).as_bytes())?);
    Ok(Created { dir: dir.to_path_buf(), files })
}

/// Signs a new certificate and key for `role` with the CA in `dir`, replacing the old ones
/// (members that use them reload them within seconds, or on SIGHUP).
pub fn issue(dir: &Path, role: Role, hosts: &[String]) -> Result<Vec<PathBuf>, TlsError> {
    let key_path = dir.join(CA_KEY);
    let pem = read(&key_path)?;
    let ca_key = KeyPair::from_pem(&pem).map_err(|e| TlsError::Parse { path: key_path, why: e.to_string() })?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    write_leaf(dir, role, hosts, &issuer)
}

fn write_leaf(
    dir: &Path,
    role: Role,
    hosts: &[String],
    issuer: &Issuer<'_, KeyPair>,
) -> Result<Vec<PathBuf>, TlsError> {
    let mut names = vec![role.name().to_string()];
    if role == Role::Master {
        names.extend(hosts.iter().filter(|h| !h.is_empty()).cloned());
    }
    let mut params = CertificateParams::new(names).map_err(TlsError::Generate)?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "Flotilla");
    subject.push(DnType::CommonName, role.name());
    params.distinguished_name = subject;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        // A master serves clients and is itself a client of its peers; a worker serves the
        // outputs it holds to other workers and to masters.
        Role::Master | Role::Worker => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, LEAF_DAYS);
    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let cert = params.signed_by(&key, issuer).map_err(TlsError::Generate)?;
    let (cert_file, key_file) = role.files();
    // The key first: a member that reloads between the two writes sees an old certificate
    // with a new key, fails to pair them, and keeps what it had until the next look.
    let key_path = write_private(&dir.join(key_file), key.serialize_pem().as_bytes())?;
    let cert_path = write_public(&dir.join(cert_file), cert.pem().as_bytes())?;
    Ok(vec![cert_path, key_path])
}

/// A new secret: 32 random bytes from the operating system, as hex.
pub fn new_token() -> Result<String, TlsError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| TlsError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A token's SHA-256: what the replicated state keeps of a named token. Tokens are 256 random
/// bits, so a plain (unsalted, fast) hash is as strong as the token.
pub fn hash_token(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub(crate) fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<PathBuf, TlsError> {
    write_atomically(path, bytes, 0o644)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<PathBuf, TlsError> {
    write_atomically(path, bytes, 0o600)
}

/// Writes beside `path` and renames over it, so a member reloading never reads half a file.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf, TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io { path: path.to_path_buf(), source };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staged = path.with_file_name(format!("{name}.new"));
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&staged).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&staged, path).map_err(io)?;
    Ok(path.to_path_buf())
}

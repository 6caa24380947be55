//! `fleetctl tls`: the cluster's CA and the certificates it signs, made on this machine. Nothing
//! here talks to fleetd.

use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_trust::{Kind, Pem, PemFiles, Role, San, Validity};

/// The files of a CA made by `tls ca create`, in its directory.
const CA_STEM: &str = "ca";

/// What a certificate is for, as `--role` names it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// A person or program with every right (fleet-operator).
    Operator,
    /// A person or program that only reads (fleet-viewer).
    Viewer,
    /// A fleetd (fleet-machine): its name is the machine id, its --ip/--dns the addresses its
    /// API and peer endpoint are reached at.
    Machine,
    /// An etcd member's certificate (etcd's --cert-file, --peer-cert-file): no fleet role.
    EtcdServer,
    /// A client of etcd, such as fleetd's etcd_certfile: no fleet role.
    EtcdClient,
}

impl CertRole {
    fn kind(self) -> Kind {
        match self {
            CertRole::Operator => Kind::Fleet(Role::Operator),
            CertRole::Viewer => Kind::Fleet(Role::Viewer),
            CertRole::Machine => Kind::Fleet(Role::Machine),
            CertRole::EtcdServer => Kind::EtcdServer,
            CertRole::EtcdClient => Kind::EtcdClient,
        }
    }

    /// How the summary line names the holder's kind.
    fn describe(self) -> &'static str {
        match self {
            CertRole::Operator => "fleet-operator",
            CertRole::Viewer => "fleet-viewer",
            CertRole::Machine => "fleet-machine",
            CertRole::EtcdServer => "etcd server",
            CertRole::EtcdClient => "etcd client",
        }
    }
}

/// `tls cert create`'s request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// The directory of the CA that signs (`ca.pem`, `ca-key.pem`).
    pub ca: PathBuf,
    pub role: CertRole,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
    pub days: u32,
    /// `PREFIX` of `PREFIX.pem` and `PREFIX-key.pem`, or a directory to write `NAME.pem` in.
    pub out: Option<PathBuf>,
}

fn lifetime(days: u32) -> Validity {
    Validity::starting_now(Duration::from_secs(u64::from(days) * 86_400))
}

fn days(days: u32) -> String {
    match days {
        1 => "1 day".to_owned(),
        n => format!("{n} days"),
    }
}

/// A directory for keys, and any missing parent, for their owner only.
fn create_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// `tls ca create`: a new CA in `dir` (created if need be, for its owner only). Returns what
/// to print.
pub fn create_ca(dir: &Path, name: &str, valid_days: u32) -> Result<String, String> {
    if !dir.is_dir() {
        create_dir(dir)?;
    }
    let pem = fleet_trust::new_ca(name, lifetime(valid_days)).map_err(|e| e.to_string())?;
    let files = fleet_trust::create_pem(dir, CA_STEM, &pem).map_err(|e| e.to_string())?;
    Ok(format!(
        "wrote {} (certificate of the CA {name:?}, valid for {}: give it to every fleetd and \
         fleetctl)\nwrote {} (its private key: keep it secret, it signs the cluster's \
         certificates)\n",
        files.cert.display(),
        days(valid_days),
        files.key.display(),
    ))
}

/// `tls cert create`: a certificate signed by the CA in `request.ca`, in a directory created if
/// need be. Returns what to print.
pub fn create_cert(request: &CertRequest) -> Result<String, String> {
    let (name, sans) = check(request)?;
    let (dir, stem) = destination(request.out.as_deref(), &name)?;
    let ca = read_ca(&request.ca)?;
    if !dir.as_os_str().is_empty() && !dir.is_dir() {
        create_dir(&dir)?;
    }
    let pem = fleet_trust::issue_for(
        &ca,
        request.role.kind(),
        &name,
        &sans,
        lifetime(request.days),
    )
    .map_err(|e| e.to_string())?;
    let PemFiles { cert, key } =
        fleet_trust::create_pem(&dir, &stem, &pem).map_err(|e| e.to_string())?;
    let names = match sans.as_slice() {
        [] => String::new(),
        _ => {
            let sans = sans.iter().map(San::to_string).collect::<Vec<_>>();
            format!(", for {}", sans.join(", "))
        }
    };
    Ok(format!(
        "wrote {} (certificate of {name:?}, {}{names}, valid for {})\nwrote {} (its private \
         key: keep it secret)\n",
        cert.display(),
        request.role.describe(),
        days(request.days),
        key.display(),
    ))
}

/// The certificate's common name and subjectAltNames, if they suit its role.
fn check(request: &CertRequest) -> Result<(String, Vec<San>), String> {
    let sans: Vec<San> = request
        .ips
        .iter()
        .map(|ip| San::Ip(*ip))
        .chain(request.dns.iter().map(|d| San::Dns(d.clone())))
        .collect();
    let name = match request.role {
        CertRole::Machine => machine_id(&request.name).ok_or_else(|| {
            format!(
                "a machine's certificate is named after its machine id (32 hexadecimal \
                 characters, as in /etc/machine-id), and {:?} is none",
                request.name
            )
        })?,
        _ => request.name.clone(),
    };
    let serves = request.role.kind().serves();
    if serves && sans.is_empty() {
        return Err(format!(
            "{} certificates need the addresses they are reached at: give --ip and/or --dns",
            request.role.describe()
        ));
    }
    if !serves && !sans.is_empty() {
        return Err(format!(
            "{} certificates are clients' and carry no addresses: --ip and --dns are for \
             machine and etcd-server certificates",
            request.role.describe()
        ));
    }
    Ok((name, sans))
}

/// A machine id as fleetd reads it from /etc/machine-id (lower case).
fn machine_id(name: &str) -> Option<String> {
    (name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| name.to_ascii_lowercase())
}

/// Where the certificate goes: `--out PREFIX` (`PREFIX.pem`, `PREFIX-key.pem`), `--out DIR`
/// (an existing directory, or a path ending in `/`: `DIR/NAME.pem`), or `./NAME.pem`.
fn destination(out: Option<&Path>, name: &str) -> Result<(PathBuf, String), String> {
    let into_dir = |dir: &Path| {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains('/')
            && !name.chars().any(char::is_control);
        if plain {
            Ok((dir.to_owned(), name.to_owned()))
        } else {
            Err(format!(
                "{name:?} cannot name the certificate's files: give them a name with --out PREFIX"
            ))
        }
    };
    let Some(out) = out else {
        return into_dir(Path::new("."));
    };
    let text = out.as_os_str().to_string_lossy();
    if out.is_dir() || text.ends_with('/') {
        return into_dir(out);
    }
    let stem = out
        .file_name()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty() && *s != "..")
        .ok_or_else(|| format!("--out {text:?}: expected a path prefix such as certs/alice"))?;
    let dir = out.parent().unwrap_or(Path::new(""));
    Ok((dir.to_owned(), stem.to_owned()))
}

/// The CA in `dir`, checked (its certificate readable and valid now).
fn read_ca(dir: &Path) -> Result<Pem, String> {
    let cert_path = dir.join(format!("{CA_STEM}.pem"));
    let key_path = dir.join(format!("{CA_STEM}-key.pem"));
    fleet_trust::load_ca(&cert_path).map_err(|e| e.to_string())?;
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let cert = read(&cert_path)?;
    let key = read(&key_path)?;
    Ok(Pem { cert, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE: &str = "0123456789ABCDEF0123456789abcdef";

    fn request(role: CertRole, name: &str, ips: &[&str], dns: &[&str]) -> CertRequest {
        CertRequest {
            ca: "ca".into(),
            role,
            name: name.into(),
            ips: ips.iter().map(|ip| ip.parse().expect("ip")).collect(),
            dns: dns.iter().map(|d| d.to_string()).collect(),
            days: 365,
            out: None,
        }
    }

    #[test]
    fn each_role_gets_the_names_it_needs() {
        use CertRole::*;
        type Expected<'a> = Result<(&'a str, Vec<&'a str>), &'a str>;
        let cases: Vec<(CertRequest, Expected)> = vec![
            (request(Operator, "alice", &[], &[]), Ok(("alice", vec![]))),
            (request(Viewer, "bob", &[], &[]), Ok(("bob", vec![]))),
            (
                request(Machine, MACHINE, &["10.0.0.1"], &["node1.example"]),
                Ok(("0123456789abcdef0123456789abcdef", vec!["10.0.0.1", "node1.example"])),
            ),
            (
                request(EtcdServer, "etcd0", &["10.0.0.5", "127.0.0.1"], &[]),
                Ok(("etcd0", vec!["10.0.0.5", "127.0.0.1"])),
            ),
            (request(EtcdClient, "fleetd", &[], &[]), Ok(("fleetd", vec![]))),
            (
                request(Machine, "node1", &["10.0.0.1"], &[]),
                Err("a machine's certificate is named after its machine id (32 hexadecimal characters, as in /etc/machine-id), and \"node1\" is none"),
            ),
            (
                request(Machine, MACHINE, &[], &[]),
                Err("fleet-machine certificates need the addresses they are reached at: give --ip and/or --dns"),
            ),
            (
                request(EtcdServer, "etcd0", &[], &[]),
                Err("etcd server certificates need the addresses they are reached at: give --ip and/or --dns"),
            ),
            (
                request(Operator, "alice", &["10.0.0.1"], &[]),
                Err("fleet-operator certificates are clients' and carry no addresses: --ip and --dns are for machine and etcd-server certificates"),
            ),
            (
                request(EtcdClient, "fleetd", &[], &["x.example"]),
                Err("etcd client certificates are clients' and carry no addresses: --ip and --dns are for machine and etcd-server certificates"),
            ),
        ];
        for (req, expected) in cases {
            let got = check(&req)
                .map(|(name, sans)| (name, sans.iter().map(San::to_string).collect::<Vec<_>>()));
            let expected = expected.map(|(name, sans)| {
                (
                    name.to_owned(),
                    sans.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                )
            });
            assert_eq!(got, expected.map_err(str::to_owned), "{req:?}");
        }
    }

    #[test]
    fn files_are_named_after_the_holder_or_the_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let existing = dir.path().to_owned();
        let p = |s: &str| PathBuf::from(s);
        type Expected<'a> = Result<(PathBuf, &'a str), String>;
        let cases: Vec<(Option<PathBuf>, &str, Expected)> = vec![
            (None, "alice", Ok((p("."), "alice"))),
            (Some(p("certs/alice-laptop")), "alice", Ok((p("certs"), "alice-laptop"))),
            (Some(p("bob")), "alice", Ok((p(""), "bob"))),
            (Some(p("certs/")), "alice", Ok((p("certs/"), "alice"))),
            (Some(existing.clone()), "alice", Ok((existing.clone(), "alice"))),
            (
                None,
                "team/alice",
                Err("\"team/alice\" cannot name the certificate's files: give them a name with --out PREFIX".into()),
            ),
            (
                None,
                "..",
                Err("\"..\" cannot name the certificate's files: give them a name with --out PREFIX".into()),
            ),
            (Some(p("team/alice")), "team/alice", Ok((p("team"), "alice"))),
            (
                Some(p("certs/..")),
                "alice",
                Err("--out \"certs/..\": expected a path prefix such as certs/alice".into()),
            ),
        ];
        for (out, name, expected) in cases {
            let got = destination(out.as_deref(), name);
            let expected = expected.map(|(dir, stem)| (dir, stem.to_owned()));
            assert_eq!(got, expected, "{out:?} {name:?}");
        }
    }
}

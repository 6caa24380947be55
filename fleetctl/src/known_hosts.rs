//! fleet's host key checking for `fleetctl ssh` (`--strict-host-key-checking`,
//! `--known-hosts-file`), in front of the system `ssh`.
//!
//! fleet checked the key a machine presents against its own known-hosts file: a known key
//! connects, a different key for a known host is refused with OpenSSH's warning, and an
//! unknown host is asked about on stderr, the answer read from standard input (so a script can
//! pipe `yes`), then added to the file. OpenSSH asks on the terminal only, so here the key is
//! fetched first by a probe (`ssh` with authentication disabled, recording the key into a
//! scratch file, restricted to the key types already known for the host, as fleet's client
//! was), judged and asked about here, and the real `ssh` then runs with
//! `StrictHostKeyChecking=yes` against the same file.
//!
//! Everything but [`verify`] is pure.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::commands::SshOptions;

/// A public key as a known-hosts line carries it: its type (`ssh-ed25519`) and its base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    pub key_type: String,
    pub blob: String,
}

/// What a presented key is to the known-hosts file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// One of the host's known keys.
    Known,
    /// The host has no key in the file: ask.
    Unknown,
    /// The host has keys in the file, none of them this one: refuse.
    Mismatch,
}

/// The keys the known-hosts `text` has for `host`, with fleet's rules: a line is
/// `patterns type base64 [comment]`, the patterns comma-separated, `*` and `?` wildcards, a
/// `!` pattern excluding; comments, `@` markers and hashed (`|1|`) entries are skipped, as
/// fleet skipped them.
pub fn known_keys(text: &str, host: &str) -> Vec<HostKey> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start_matches([' ', '\t']);
            if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
                return None;
            }
            let mut fields = line.split_whitespace();
            let (patterns, key_type, blob) = (fields.next()?, fields.next()?, fields.next()?);
            if patterns.starts_with('|') || !host_matches(host, patterns) {
                return None;
            }
            Some(HostKey {
                key_type: key_type.to_string(),
                blob: blob.to_string(),
            })
        })
        .collect()
}

/// Whether `host` matches a comma-separated list of patterns, a negated match winning.
fn host_matches(host: &str, patterns: &str) -> bool {
    let mut found = false;
    for pattern in patterns.split(',') {
        match pattern.strip_prefix('!') {
            Some(negated) if wildcard(host.as_bytes(), negated.as_bytes()) => return false,
            Some(_) => {}
            None => found |= wildcard(host.as_bytes(), pattern.as_bytes()),
        }
    }
    found
}

/// `*` (any run) and `?` (any one byte) matching, as OpenSSH's `match_pattern`.
fn wildcard(s: &[u8], p: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| wildcard(&s[i..], rest)),
        Some((&c, rest)) => match s.split_first() {
            Some((&h, tail)) if c == b'?' || c == h => wildcard(tail, rest),
            _ => false,
        },
    }
}

/// Judges the key a host presented against the keys known for it.
pub fn verdict(known: &[HostKey], presented: &HostKey) -> Verdict {
    if known.contains(presented) {
        Verdict::Known
    } else if known.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Mismatch
    }
}

/// The name fleet showed for a key type.
pub fn algo_name(key_type: &str) -> &str {
    match key_type {
        "ssh-rsa" => "RSA",
        "ssh-dss" => "DSA",
        t if t.starts_with("ecdsa-sha2-") => "ECDSA",
        t => t,
    }
}

/// The host key algorithms ssh may negotiate for keys of these types (an RSA key signs with
/// SHA-2 today), so that the probe gets a key of a type already known, as fleet's client
/// asked only for those.
pub fn host_key_algorithms(known: &[HostKey]) -> Vec<String> {
    let mut algorithms: Vec<String> = Vec::new();
    for key in known {
        let names: Vec<&str> = match key.key_type.as_str() {
            "ssh-rsa" => vec!["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
            t => vec![t],
        };
        for name in names {
            if !algorithms.iter().any(|a| a == name) {
                algorithms.push(name.to_string());
            }
        }
    }
    algorithms
}

/// fleet's question, on stderr.
pub fn prompt(host: &str, algo: &str, fingerprint: &str) -> String {
    format!(
        "The authenticity of host '{host}' can't be established.\n\
         {algo} key fingerprint is {fingerprint}.\n\
         Are you sure you want to continue connecting (yes/no)? "
    )
}

/// fleet's refusal of a changed host key, on stderr.
pub fn mismatch_warning(algo: &str, fingerprint: &str, file: &str) -> String {
    format!(
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
         @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
         Someone could be eavesdropping on you right now (man-in-the-middle attack)!\n\
         It is also possible that a host key has just been changed.\n\
         The fingerprint for the {algo} key sent by the remote host is\n\
         {fingerprint}.\n\
         Please contact your system administrator.\n\
         Add correct host key in {file} to get rid of this message.\n\
         Host key verification failed.\n"
    )
}

/// Asks whether to trust a new host key: the question on `out`, the answer one line of
/// `input`, read a byte at a time so that nothing past it is taken from what follows (the
/// rest of standard input is the remote command's). `yes` or `y`, in any case, trusts.
pub fn ask_to_trust(
    host: &str,
    algo: &str,
    fingerprint: &str,
    input: &mut impl Read,
    out: &mut impl Write,
) -> bool {
    let _ = out
        .write_all(prompt(host, algo, fingerprint).as_bytes())
        .and_then(|_| out.flush());
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = input.read(&mut byte) {
        if byte[0] == b'\n' || answer.len() > 64 {
            break;
        }
        answer.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&answer).trim().to_ascii_lowercase();
    answer == "yes" || answer == "y"
}

/// The line added to the known-hosts file for a trusted key.
pub fn host_line(host: &str, key: &HostKey) -> String {
    format!("{host} {} {}\n", key.key_type, key.blob)
}

/// The key a probe recorded: the first line of the scratch known-hosts file it wrote.
pub fn recorded_key(text: &str) -> Option<HostKey> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, key_type, blob) = (fields.next()?, fields.next()?, fields.next()?);
        Some(HostKey {
            key_type: key_type.to_string(),
            blob: blob.to_string(),
        })
    })
}

/// A leading `~/` made the home directory (fleet expanded it in `--known-hosts-file`).
pub fn expand_home(path: &str, home: &str) -> String {
    match path.strip_prefix("~/") {
        Some(rest) => format!("{}/{rest}", home.trim_end_matches('/')),
        None if path == "~" => home.to_string(),
        None => path.to_string(),
    }
}

/// The probe's `ssh` arguments: connect as the real `ssh` will (user, jump host, timeout),
/// record the host's key into `scratch` and do nothing else (no authentication can succeed,
/// no connection is shared, standard input is not read).
pub fn probe_args(
    options: &SshOptions,
    address: &str,
    algorithms: &[String],
    scratch: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut option = |o: String| {
        args.push("-o".to_string());
        args.push(o);
    };
    option("StrictHostKeyChecking=accept-new".into());
    option(format!("UserKnownHostsFile={}", scratch.display()));
    option("GlobalKnownHostsFile=/dev/null".into());
    option("HashKnownHosts=no".into());
    option("BatchMode=yes".into());
    option("ControlPath=none".into());
    option("LogLevel=ERROR".into());
    for auth in [
        "PubkeyAuthentication",
        "PasswordAuthentication",
        "KbdInteractiveAuthentication",
        "GSSAPIAuthentication",
        "HostbasedAuthentication",
    ] {
        option(format!("{auth}=no"));
    }
    if !algorithms.is_empty() {
        option(format!("HostKeyAlgorithms={}", algorithms.join(",")));
    }
    if options.timeout.is_finite() && options.timeout > 0.0 {
        option(format!("ConnectTimeout={}", options.timeout.ceil() as u64));
    }
    if let Some(tunnel) = &options.tunnel {
        args.push("-J".to_string());
        args.push(crate::commands::tunnel_with_user(options, tunnel));
    }
    args.extend(["-T", "-n", "-l", &options.username, "--", address, "true"].map(String::from));
    args
}

/// A scratch file, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The MD5 fingerprint fleet showed (`xx:xx:...`), as `ssh-keygen` computes it from the file
/// holding the key; `-` if it cannot.
fn fingerprint(file: &Path) -> String {
    let output = Command::new("ssh-keygen")
        .args(["-l", "-E", "md5", "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .output();
    let text = match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => return "-".to_string(),
    };
    text.split_whitespace()
        .nth(1)
        .map(|f| f.trim_start_matches("MD5:").to_string())
        .unwrap_or_else(|| "-".to_string())
}

/// Checks the host key of `address` as fleet did before `ssh` runs, asking on stderr and
/// reading the answer from standard input for a new host. `Err` carries the exit code after
/// saying why on stderr.
pub fn verify(options: &SshOptions, address: &str) -> Result<(), u8> {
    let file = options.known_hosts_file.as_str();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            eprintln!("Failed to read known_hosts file {file}: {e}");
            String::new()
        }
    };
    let known = known_keys(&text, address);
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "fleetctl-known-hosts-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )));
    let args = probe_args(options, address, &host_key_algorithms(&known), &scratch.0);
    let probe = Command::new("ssh")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let probe = match probe {
        Ok(p) => p,
        Err(e) => {
            eprintln!("Failed running ssh: {e}");
            return Err(1);
        }
    };
    let recorded = std::fs::read_to_string(&scratch.0).unwrap_or_default();
    let Some(presented) = recorded_key(&recorded) else {
        let why = String::from_utf8_lossy(&probe.stderr);
        eprintln!(
            "Failed building SSH client: no host key from {address}: {}",
            why.trim()
        );
        return Err(1);
    };
    let algo = algo_name(&presented.key_type).to_string();
    match verdict(&known, &presented) {
        Verdict::Known => Ok(()),
        Verdict::Mismatch => {
            eprint!(
                "{}",
                mismatch_warning(&algo, &fingerprint(&scratch.0), file)
            );
            eprintln!("Failed building SSH client: host key mismatch");
            Err(1)
        }
        Verdict::Unknown => {
            // Standard input unbuffered (a duplicate of fd 0): what follows the answer stays
            // for ssh, which inherits it.
            let stdin = std::io::stdin();
            let trusted = match std::os::fd::AsFd::as_fd(&stdin).try_clone_to_owned() {
                Ok(fd) => ask_to_trust(
                    address,
                    &algo,
                    &fingerprint(&scratch.0),
                    &mut std::fs::File::from(fd),
                    &mut std::io::stderr(),
                ),
                Err(_) => false,
            };
            if !trusted {
                eprintln!("Host key verification failed.");
                eprintln!("Failed building SSH client: unauthorized host");
                return Err(1);
            }
            match append(file, &host_line(address, &presented)) {
                Ok(()) => eprintln!(
                    "Warning: Permanently added '{address}' ({algo}) to the list of known hosts."
                ),
                Err(_) => {
                    eprintln!("Failed to add the host to the list of known hosts ({file}).")
                }
            }
            Ok(())
        }
    }
}

/// Appends a line to the known-hosts file, creating it (0644) and its directory (0700).
fn append(file: &str, line: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = Path::new(file)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(file)?
        .write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(key_type: &str, blob: &str) -> HostKey {
        HostKey {
            key_type: key_type.into(),
            blob: blob.into(),
        }
    }

    #[test]
    fn known_keys_follow_fleets_matching() {
        let text = "\
# a comment
10.0.0.1 ssh-ed25519 AAAAone
   10.0.0.2,10.0.0.3 ssh-rsa AAAAtwo comment here
10.0.1.* ecdsa-sha2-nistp256 AAAAthree
10.0.2.*,!10.0.2.9 ssh-ed25519 AAAAfour
|1|salt=|hash= ssh-ed25519 AAAAhashed
@cert-authority 10.0.0.1 ssh-ed25519 AAAAca
[10.0.0.1]:2222 ssh-ed25519 AAAAport
10.0.0.1
";
        let cases = [
            ("10.0.0.1", vec![key("ssh-ed25519", "AAAAone")]),
            ("10.0.0.3", vec![key("ssh-rsa", "AAAAtwo")]),
            ("10.0.1.77", vec![key("ecdsa-sha2-nistp256", "AAAAthree")]),
            ("10.0.2.8", vec![key("ssh-ed25519", "AAAAfour")]),
            ("10.0.2.9", vec![]),
            ("10.0.0.10", vec![]),
            ("10.0.0", vec![]),
        ];
        for (host, want) in cases {
            assert_eq!(known_keys(text, host), want, "{host}");
        }
    }

    #[test]
    fn a_key_is_known_new_or_a_mismatch() {
        let known = [key("ssh-ed25519", "A"), key("ssh-rsa", "B")];
        assert_eq!(verdict(&known, &key("ssh-rsa", "B")), Verdict::Known);
        assert_eq!(verdict(&known, &key("ssh-ed25519", "C")), Verdict::Mismatch);
        assert_eq!(verdict(&[], &key("ssh-ed25519", "C")), Verdict::Unknown);
        assert_eq!(
            host_key_algorithms(&known),
            ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
        );
        assert!(host_key_algorithms(&[]).is_empty());
        assert_eq!(algo_name("ssh-rsa"), "RSA");
        assert_eq!(algo_name("ecdsa-sha2-nistp384"), "ECDSA");
        assert_eq!(algo_name("ssh-ed25519"), "ssh-ed25519");
    }

    #[test]
    fn the_answer_is_read_from_the_input_and_nothing_more() {
        let cases = [
            ("yes\n", true),
            ("y\n", true),
            ("YES\n", true),
            (" yes \n", true),
            ("no\n", false),
            ("\n", false),
            ("", false),
            ("yes", true),
            ("yess\n", false),
        ];
        for (input, want) in cases {
            let rest = if input.ends_with('\n') {
                "uptime\n"
            } else {
                ""
            };
            let mut reader = std::io::Cursor::new(format!("{input}{rest}").into_bytes());
            let mut asked = Vec::new();
            let trusted = ask_to_trust("10.0.0.1", "ssh-ed25519", "5e:1c", &mut reader, &mut asked);
            assert_eq!(trusted, want, "{input:?}");
            assert_eq!(
                String::from_utf8_lossy(&asked),
                "The authenticity of host '10.0.0.1' can't be established.\n\
                 ssh-ed25519 key fingerprint is 5e:1c.\n\
                 Are you sure you want to continue connecting (yes/no)? "
            );
            // What followed the answer's line is left for ssh.
            let mut left = String::new();
            reader.read_to_string(&mut left).unwrap();
            assert_eq!(left, rest, "{input:?}");
        }
    }

    #[test]
    fn the_probe_records_the_key_and_does_nothing_else() {
        let options = SshOptions {
            username: "core".into(),
            strict_host_key_checking: true,
            known_hosts_file: "/home/u/.fleetctl/known_hosts".into(),
            tunnel: Some("bastion".into()),
            forward_agent: true,
            timeout: 2.5,
        };
        let args = probe_args(
            &options,
            "10.0.0.1",
            &["ssh-ed25519".to_string()],
            Path::new("/tmp/scratch"),
        );
        let joined = args.join(" ");
        for want in [
            "-o StrictHostKeyChecking=accept-new",
            "-o UserKnownHostsFile=/tmp/scratch",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o BatchMode=yes",
            "-o ControlPath=none",
            "-o PubkeyAuthentication=no",
            "-o PasswordAuthentication=no",
            "-o HostKeyAlgorithms=ssh-ed25519",
            "-o ConnectTimeout=3",
            "-J core@bastion",
            "-T -n -l core -- 10.0.0.1 true",
        ] {
            assert!(joined.contains(want), "{want} not in {joined}");
        }
        // No agent is forwarded to a host not yet trusted.
        assert!(!args.iter().any(|a| a == "-A"), "{joined}");
        assert!(joined.ends_with("-- 10.0.0.1 true"), "{joined}");
    }

    #[test]
    fn lines_paths_and_recorded_keys() {
        let k = key("ssh-ed25519", "AAAAC3");
        assert_eq!(host_line("10.0.0.1", &k), "10.0.0.1 ssh-ed25519 AAAAC3\n");
        assert_eq!(
            recorded_key("10.0.0.1 ssh-ed25519 AAAAC3\n"),
            Some(k.clone())
        );
        assert_eq!(recorded_key(""), None);
        assert_eq!(recorded_key("garbage\n"), None);
        assert_eq!(
            expand_home("~/.fleetctl/known_hosts", "/root/"),
            "/root/.fleetctl/known_hosts"
        );
        assert_eq!(expand_home("/etc/kh", "/root"), "/etc/kh");
    }

    #[test]
    fn a_trusted_key_is_appended_to_a_new_file() {
        let dir = std::env::temp_dir().join(format!("fleetctl-kh-test-{}", std::process::id()));
        let file = dir.join("sub/known_hosts");
        let file = file.to_string_lossy();
        append(&file, "a ssh-ed25519 A\n").unwrap();
        append(&file, "b ssh-ed25519 B\n").unwrap();
        let text = std::fs::read_to_string(file.as_ref()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(text, "a ssh-ed25519 A\nb ssh-ed25519 B\n");
    }
}

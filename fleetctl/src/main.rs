//! fleetctl: edit the cluster's desired state and read its current state, through fleetd's API.

mod batch;
mod commands;
mod known_hosts;
mod table;
mod tls;
mod updates;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use fleet_client::{Endpoint, Tls};

/// The help of fleetctl itself in fleet's layout (NAME, USAGE, VERSION, COMMANDS, OPTIONS
/// sections, tab-indented), which scripts read the version from.
const HELP_TEMPLATE: &str = "\
NAME:
\t{name} - {about}

USAGE:
\t{usage}

VERSION:
\t{version}

COMMANDS:
{subcommands}

OPTIONS:
{options}
";

#[derive(Parser, Debug)]
#[command(
    name = "fleetctl",
    version,
    about = "fleetctl is a command-line interface to fleet, the cluster-wide CoreOS init system.",
    help_template = HELP_TEMPLATE
)]
struct Cli {
    /// Location of the fleet API: unix:///path, a bare /path, http://host:port, or
    /// https://host:port (TLS: see --ca-file, --cert-file and --key-file).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_ENDPOINT",
        default_value = "unix:///var/run/fleet.sock"
    )]
    endpoint: String,
    /// Amount of time in seconds to allow a single request before considering it failed
    /// (0.001 to 86400).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_REQUEST_TIMEOUT",
        default_value = "3",
        value_parser = request_timeout
    )]
    request_timeout: Duration,
    /// Jump host, [user@]host[:port], through which `fleetctl ssh` reaches machines (ssh -J).
    /// API requests do not go through it: they go to --endpoint directly.
    #[arg(long, global = true, env = "FLEETCTL_TUNNEL")]
    tunnel: Option<String>,
    /// Username to use when connecting to CoreOS instance.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_SSH_USERNAME",
        default_value = "core"
    )]
    ssh_username: String,
    /// Verify host keys presented by remote machines before initiating SSH connections.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_STRICT_HOST_KEY_CHECKING",
        default_value = "true",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    strict_host_key_checking: bool,
    /// File used to store remote machine fingerprints (default ~/.fleetctl/known_hosts).
    /// Ignored if strict host key checking is disabled.
    #[arg(long, global = true, env = "FLEETCTL_KNOWN_HOSTS_FILE")]
    known_hosts_file: Option<String>,
    /// Amount of time in seconds to allow for SSH connection initialization before failing
    /// (0 for no limit, at most 86400).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_SSH_TIMEOUT",
        default_value_t = 10.0,
        value_parser = ssh_timeout
    )]
    ssh_timeout: f64,
    /// The cluster's CA certificate (PEM), which signs fleetd's certificate, for an https://
    /// endpoint. Without it, the CAs of the system's bundle
    /// (/etc/ssl/certs/ca-certificates.crt) are trusted.
    #[arg(long, global = true, env = "FLEETCTL_CA_FILE", value_name = "FILE", value_parser = path())]
    ca_file: Option<PathBuf>,
    /// This client's certificate (PEM), signed by the cluster's CA, for an https:// endpoint:
    /// its role (operator or viewer) is what fleetctl may do. Needs --key-file.
    #[arg(long, global = true, env = "FLEETCTL_CERT_FILE", value_name = "FILE", value_parser = path())]
    cert_file: Option<PathBuf>,
    /// The private key (PEM) of --cert-file.
    #[arg(long, global = true, env = "FLEETCTL_KEY_FILE", value_name = "FILE", value_parser = path())]
    key_file: Option<PathBuf>,
    /// Print the API requests fleetctl makes, and their answers' status, to stderr.
    #[arg(long, global = true, env = "FLEETCTL_DEBUG")]
    debug: bool,
    /// None: fleet printed its help and exited 0.
    #[command(subcommand)]
    command: Option<Command>,
}

/// A path, where an empty one (`FLEETCTL_CA_FILE=`) stands for none, as for `--tunnel`.
fn path() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

/// A path flag's value, unless empty.
fn given(path: &Option<PathBuf>) -> Option<&PathBuf> {
    path.as_ref().filter(|p| !p.as_os_str().is_empty())
}

/// The TLS flags: id, flag, environment variable.
const TLS_FLAGS: [(&str, &str, &str); 3] = [
    ("ca_file", "--ca-file", "FLEETCTL_CA_FILE"),
    ("cert_file", "--cert-file", "FLEETCTL_CERT_FILE"),
    ("key_file", "--key-file", "FLEETCTL_KEY_FILE"),
];

/// The TLS settings the flags ask for. They are for an https:// endpoint only (given for
/// another, they are an error, not ignored), and a certificate goes with its key. `from_env`
/// says whether a flag's value came from its environment variable, which a message then names.
fn tls_settings(cli: &Cli, from_env: &dyn Fn(&str) -> bool) -> Result<Tls, String> {
    let (ca_file, cert_file, key_file) = (
        given(&cli.ca_file),
        given(&cli.cert_file),
        given(&cli.key_file),
    );
    let is_given = |id: &str| match id {
        "ca_file" => ca_file.is_some(),
        "cert_file" => cert_file.is_some(),
        _ => key_file.is_some(),
    };
    let named = |id: &str| {
        let (_, flag, env) = TLS_FLAGS
            .iter()
            .find(|(i, ..)| *i == id)
            .copied()
            .unwrap_or((id, id, id));
        if from_env(id) {
            env.to_owned()
        } else {
            flag.to_owned()
        }
    };
    match Endpoint::parse(&cli.endpoint) {
        Ok(Endpoint::Https(_)) => {}
        // The client reports an endpoint it cannot parse.
        Ok(Endpoint::Unix(_) | Endpoint::Http(_)) | Err(_) => {
            let set: Vec<String> = TLS_FLAGS
                .iter()
                .filter(|(id, ..)| is_given(id))
                .map(|(id, ..)| named(id))
                .collect();
            return match set.as_slice() {
                [] => Ok(Tls::default()),
                [one] => Err(format!(
                    "{one} is for https:// endpoints only, and the endpoint {:?} is not one",
                    cli.endpoint
                )),
                [first @ .., last] => Err(format!(
                    "{} and {last} are for https:// endpoints only, and the endpoint {:?} is not one",
                    first.join(", "),
                    cli.endpoint
                )),
            };
        }
    }
    let identity = match (cert_file, key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(format!(
                "{} needs --key-file (or FLEETCTL_KEY_FILE), the certificate's private key",
                named("cert_file")
            ))
        }
        (None, Some(_)) => {
            return Err(format!(
                "{} needs --cert-file (or FLEETCTL_CERT_FILE), the certificate of that key",
                named("key_file")
            ))
        }
    };
    Ok(Tls {
        ca_file: ca_file.cloned(),
        identity,
    })
}

/// The longest timeout fleetctl takes, in seconds (a day): a longer one is a typo.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// `--request-timeout`: seconds, from a millisecond (shorter rounds to a timeout that always
/// expires) to [`MAX_TIMEOUT_SECS`]. Checked here, since `Duration::from_secs_f64` panics on a
/// number it cannot hold (`1e300`, `NaN`, negative).
fn request_timeout(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a number of seconds from 0.001 to {MAX_TIMEOUT_SECS}");
    let secs: f64 = s.trim().parse().map_err(|_| bad())?;
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if secs <= MAX_TIMEOUT_SECS && d >= Duration::from_millis(1) => Ok(d),
        _ => Err(bad()),
    }
}

/// `--ssh-timeout`: seconds, 0 (no limit) to [`MAX_TIMEOUT_SECS`].
fn ssh_timeout(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(secs) if (0.0..=MAX_TIMEOUT_SECS).contains(&secs) => Ok(secs),
        _ => Err(format!(
            "{s:?} is not a number of seconds from 0 to {MAX_TIMEOUT_SECS}"
        )),
    }
}

/// How long a command waits for units to reach their state.
#[derive(Args, Debug, Clone, Copy)]
pub struct Block {
    /// Wait until the units reach their state, performing up to N attempts (half a second
    /// each) before giving up. 0 means no limit. Does not apply to global units.
    #[arg(long, default_value_t = 60)]
    pub block_attempts: u32,
    /// Do not wait until the units have reached their state before exiting.
    #[arg(long)]
    pub no_block: bool,
}

/// Which columns a list command prints, and how.
#[derive(Args, Debug, Clone)]
pub struct Listing {
    /// Columns to print, comma-separated.
    #[arg(long)]
    pub fields: Option<String>,
    /// Do not ellipsize machine ids and hashes.
    #[arg(long, short = 'l')]
    pub full: bool,
    /// Omit the header line.
    #[arg(long)]
    pub no_legend: bool,
    /// `table` (fleet's columns) or `json` (one JSON document in the API's shapes, for
    /// scripts).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Upload one or more units to the cluster without starting them.
    Submit {
        /// Replace the old submitted units in the cluster with new versions.
        #[arg(long)]
        replace: bool,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Schedule one or more units in the cluster, first submitting them if necessary.
    Load {
        #[command(flatten)]
        block: Block,
        /// Replace the old scheduled units in the cluster with new versions.
        #[arg(long)]
        replace: bool,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Start one or more units in the cluster, first submitting and loading them if necessary.
    Start {
        #[command(flatten)]
        block: Block,
        /// Replace the already started units in the cluster with new versions.
        #[arg(long)]
        replace: bool,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Stop one or more units in the cluster; they stay loaded.
    Stop {
        #[command(flatten)]
        block: Block,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Unschedule one or more units in the cluster; they stay known to it.
    Unload {
        #[command(flatten)]
        block: Block,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Destroy one or more units in the cluster.
    Destroy {
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Instruct systemd to restart one or more units in the cluster (stop, then start, one
    /// unit after another); a stopped unit is started.
    Restart {
        #[command(flatten)]
        block: Block,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Output the contents of a submitted unit.
    Cat { unit: String },
    /// List the versions of a unit's content kept by the cluster (the current one and up to
    /// 10 previous ones), newest first, with the time each became current.
    History {
        #[command(flatten)]
        listing: Listing,
        unit: String,
    },
    /// Put back a previous version of a unit's content (by default the one before the
    /// current), keeping its desired state: its machine restarts it on that content.
    Rollback {
        #[command(flatten)]
        block: Block,
        unit: String,
        /// The version to go back to: its hash, or a prefix of it that names one version
        /// (as `fleetctl history` shows it).
        hash: Option<String>,
    },
    /// List what fleet decided and what happened (a unit placed and why there, could not be
    /// placed, failed to start; a machine fenced, declared dead; ...), oldest first: every
    /// event the cluster keeps (the newest 10,000), or a unit's, or a machine's.
    Events {
        #[command(flatten)]
        listing: Listing,
        /// Only the events about this machine: its id, or a prefix of a live machine's.
        #[arg(long)]
        machine: Option<String>,
        /// Go on printing events as they are recorded.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the newest N events (by default every one kept; with --follow, 10).
        #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: Option<u32>,
        /// Only the events of this unit.
        unit: Option<String>,
    },
    /// Output the status of one or more units in the cluster (systemctl status, from the
    /// machine that runs each).
    Status {
        /// Accepted for compatibility with scripts written for fleet; status never waits.
        #[arg(long)]
        no_block: bool,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Print the journal of a unit in the cluster to stdout.
    Journal {
        /// Number of recent log lines to return.
        #[arg(long, short = 'n', default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        lines: u32,
        /// Continuously print new entries as they are appended to the journal.
        #[arg(long, short = 'f')]
        follow: bool,
        /// The machine (id or prefix) to read from, for a global unit.
        #[arg(long)]
        machine: Option<String>,
        /// Accepted for compatibility with fleet, which ran journalctl over ssh: fleetd reads
        /// the journal as root, so nothing needs sudo.
        #[arg(long)]
        sudo: bool,
        unit: String,
    },
    /// Open interactive shell on a machine in the cluster, or run COMMAND there.
    Ssh {
        /// Open SSH connection to a specific machine.
        #[arg(long, short = 'm', conflicts_with = "unit")]
        machine: Option<String>,
        /// Open SSH connection to machine running provided unit.
        #[arg(long, short = 'u')]
        unit: Option<String>,
        /// Forward local ssh-agent to target machine.
        #[arg(long, short = 'A')]
        forward_agent: bool,
        /// MACHINE|UNIT, then the command to run (after `--` if it has options).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the current state of units in the cluster.
    ListUnits {
        #[command(flatten)]
        listing: Listing,
    },
    /// List the units that exist in the cluster.
    ListUnitFiles {
        #[command(flatten)]
        listing: Listing,
    },
    /// Update units to the content of FILE a few at a time, each healthy before the next (a
    /// rolling update, driven by the engine: it goes on if fleetctl exits). The units are
    /// those matching UNIT patterns, or without any, the instances of the template FILE names,
    /// or the unit itself. A global unit is updated machine by machine. Shows each step until
    /// the update ends.
    Update {
        #[command(flatten)]
        options: crate::updates::UpdateOptions,
        file: String,
        units: Vec<String>,
    },
    /// List the rolling updates kept: those not over and the last 50 finished.
    ListUpdates {
        #[command(flatten)]
        listing: Listing,
    },
    /// Show a rolling update and each of its units.
    UpdateStatus {
        #[command(flatten)]
        listing: Listing,
        id: String,
    },
    /// Start no more units of a rolling update (those updating are still judged).
    PauseUpdate { id: String },
    /// Go on with a paused rolling update.
    ResumeUpdate { id: String },
    /// End a rolling update, leaving its units as they are.
    AbortUpdate { id: String },
    /// Drain a machine (its id, or a prefix naming one live machine): it takes no new units,
    /// and its non-global units move elsewhere one at a time, each stopped there before it
    /// starts elsewhere, as their placement rules allow. Waits until none is left.
    Drain {
        #[command(flatten)]
        block: Block,
        machine: String,
    },
    /// End a machine's drain: it takes units again (those moved away stay where they are).
    Undrain { machine: String },
    /// Remove from the cluster a machine whose lease is gone (its full id), on your word that
    /// it is powered off for good: its units are placed elsewhere and majorities are counted
    /// without it. For a cluster that lost a majority of its machines for good, where nothing
    /// moves otherwise. A machine that still runs (its peer endpoint answers) is refused.
    RemoveMachine { machine: String },
    /// Enumerate the current hosts in the cluster.
    ListMachines {
        #[command(flatten)]
        listing: Listing,
    },
    /// DEPRECATED: unit signatures were removed from fleet; does nothing and exits with 2.
    Verify { unit: Option<String> },
    /// Create the cluster's CA and the certificates it signs, here (no fleetd needed).
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Print the version and exit.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    #[command(hide = true)]
    Completion { shell: clap_complete::Shell },
    /// Print the manual page (roff).
    #[command(hide = true)]
    Man,
}

#[derive(Subcommand, Debug)]
enum TlsCommand {
    /// The cluster's CA, which signs every certificate of the cluster.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificates signed by the cluster's CA.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create a CA: DIR/ca.pem (its certificate) and DIR/ca-key.pem (its private key, mode
    /// 0600). Existing files are not overwritten.
    Create {
        /// Where to write the CA's files (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "fleet CA")]
        name: String,
        /// How long the CA is valid, in days.
        #[arg(long, default_value_t = 1825, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Create a certificate signed by the CA in DIR, and its private key (mode 0600):
    /// PREFIX.pem and PREFIX-key.pem, by default NAME.pem and NAME-key.pem in the current
    /// directory. Existing files are not overwritten.
    Create {
        /// The directory of the signing CA (ca.pem and ca-key.pem, as `tls ca create` wrote
        /// them).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// What the certificate is for: operator, viewer and machine carry that fleet role;
        /// etcd-server and etcd-client are for etcd (issue those from a CA of etcd's own).
        #[arg(long, value_enum)]
        role: tls::CertRole,
        /// The holder's name (common name): a person or program, a machine's machine id
        /// (/etc/machine-id) for --role machine, etcd's user name for --role etcd-client.
        #[arg(long)]
        name: String,
        /// An IP address the server is reached at (machine and etcd-server; repeatable).
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<IpAddr>,
        /// A DNS name the server is reached at (machine and etcd-server; repeatable).
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
        /// Write PREFIX.pem and PREFIX-key.pem; given an existing directory (or a path ending
        /// in /), NAME.pem and NAME-key.pem in it.
        #[arg(long, value_name = "PREFIX")]
        out: Option<PathBuf>,
    },
}

/// Runs a `tls` subcommand: prints what it wrote, or the error.
fn run_tls(command: TlsCommand) -> ExitCode {
    let done = match command {
        TlsCommand::Ca {
            command: CaCommand::Create { dir, name, days },
        } => tls::create_ca(&dir, &name, days),
        TlsCommand::Cert {
            command:
                CertCommand::Create {
                    ca,
                    role,
                    name,
                    ips,
                    dns,
                    days,
                    out,
                },
        } => tls::create_cert(&tls::CertRequest {
            ca,
            role,
            name,
            ips,
            dns,
            days,
            out,
        }),
    };
    match done {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// The command line, with where each value came from.
fn parse() -> (Cli, ArgMatches) {
    let matches = Cli::command().get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => (cli, matches),
        Err(e) => e.format(&mut Cli::command()).exit(),
    }
}

fn main() -> ExitCode {
    let (mut cli, matches) = parse();
    let Some(command) = cli.command.take() else {
        // As fleet: no command is a request for help, not an error.
        let mut help = <Cli as clap::CommandFactory>::command();
        return match help.print_help() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cannot write the help: {e}");
                ExitCode::from(1)
            }
        };
    };
    if let Command::Tls { command } = command {
        return run_tls(command);
    }
    match &command {
        Command::Version => {
            println!("fleetctl version {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Verify { .. } => {
            eprintln!(
                "WARNING: verify is deprecated and does nothing: fleet no longer signs units"
            );
            return ExitCode::from(2);
        }
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "fleetctl", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            return match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cannot write the manual page: {e}");
                    ExitCode::from(1)
                }
            };
        }
        _ => {}
    }
    let from_env = |id: &str| matches.value_source(id) == Some(ValueSource::EnvVariable);
    let tls = match tls_settings(&cli, &from_env) {
        Ok(tls) => tls,
        Err(e) => Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, e)
            .exit(),
    };
    let system_bundle = tls.ca_file.is_none();
    let client = match fleet_client::Client::with_tls(&cli.endpoint, cli.request_timeout, tls) {
        Ok(c) => c.with_debug(cli.debug),
        Err(e @ fleet_client::ClientError::Tls(_)) if system_bundle => {
            eprintln!(
                "{e} (without --ca-file, fleetctl trusts the system's CA bundle: give the \
                 cluster's CA with --ca-file)"
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let ssh = commands::SshOptions {
        username: cli.ssh_username.clone(),
        strict_host_key_checking: cli.strict_host_key_checking,
        known_hosts_file: {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            let file = cli
                .known_hosts_file
                .as_deref()
                .unwrap_or("~/.fleetctl/known_hosts");
            known_hosts::expand_home(file, &home)
        },
        tunnel: cli.tunnel.clone().filter(|t| !t.is_empty()),
        forward_agent: false,
        timeout: cli.ssh_timeout,
    };
    let mut ctl = commands::Ctl::new(client);
    match &command {
        Command::Submit { replace: true, .. } => ctl = ctl.replacing("submit"),
        Command::Load { replace: true, .. } => ctl = ctl.replacing("load"),
        Command::Start { replace: true, .. } => ctl = ctl.replacing("start"),
        _ => {}
    }
    let code = runtime.block_on(async {
        match command {
            Command::Submit { units, .. } => ctl.submit(&units).await,
            Command::Load { block, units, .. } => ctl.load(&units, block).await,
            Command::Start { block, units, .. } => ctl.start(&units, block).await,
            Command::Stop { block, units } => ctl.stop(&units, block).await,
            Command::Unload { block, units } => ctl.unload(&units, block).await,
            Command::Destroy { units } => ctl.destroy(&units).await,
            Command::Restart { block, units } => ctl.restart(&units, block).await,
            Command::Cat { unit } => ctl.cat(&unit).await,
            Command::History { listing, unit } => ctl.history(&unit, &listing).await,
            Command::Rollback { block, unit, hash } => {
                ctl.rollback(&unit, hash.as_deref(), block).await
            }
            Command::Events {
                listing,
                machine,
                follow,
                limit,
                unit,
            } => {
                let query = commands::EventsQuery {
                    unit: unit.as_deref(),
                    machine: machine.as_deref(),
                    follow,
                    limit,
                };
                ctl.events(&query, &listing).await
            }
            Command::Status { units, .. } => ctl.status(&units).await,
            Command::Journal {
                lines,
                follow,
                machine,
                unit,
                ..
            } => ctl.journal(&unit, lines, follow, machine.as_deref()).await,
            Command::Ssh {
                machine,
                unit,
                forward_agent,
                args,
            } => {
                let ssh = commands::SshOptions {
                    forward_agent,
                    ..ssh
                };
                ctl.ssh(&ssh, machine.as_deref(), unit.as_deref(), &args)
                    .await
            }
            Command::ListUnits { listing } => ctl.list_units(&listing).await,
            Command::ListUnitFiles { listing } => ctl.list_unit_files(&listing).await,
            Command::ListMachines { listing } => ctl.list_machines(&listing).await,
            Command::Drain { block, machine } => ctl.drain(&machine, block).await,
            Command::Update {
                options,
                file,
                units,
            } => ctl.update(&file, &units, &options).await,
            Command::ListUpdates { listing } => ctl.list_updates(&listing).await,
            Command::UpdateStatus { listing, id } => ctl.update_status(&id, &listing).await,
            Command::PauseUpdate { id } => ctl.steer_update(&id, "pause").await,
            Command::ResumeUpdate { id } => ctl.steer_update(&id, "resume").await,
            Command::AbortUpdate { id } => ctl.steer_update(&id, "abort").await,
            Command::Undrain { machine } => ctl.undrain(&machine).await,
            Command::RemoveMachine { machine } => ctl.remove_machine(&machine).await,
            Command::Version
            | Command::Tls { .. }
            | Command::Verify { .. }
            | Command::Completion { .. }
            | Command::Man => 0,
        }
    });
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut argv = vec!["fleetctl"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn command(args: &[&str]) -> Command {
        parse(args).command.expect("a command")
    }

    #[test]
    fn ssh_command_lines() {
        let cli = parse(&["ssh", "f1ee7002", "--", "ls", "-l"]);
        let Command::Ssh { args, machine, .. } = cli.command.expect("a command") else {
            panic!("not ssh");
        };
        assert_eq!(machine, None);
        assert_eq!(args[0], "f1ee7002");
        assert_eq!(commands::trim_to_dashes(&args[1..]), ["ls", "-l"]);

        let cli = parse(&[
            "--strict-host-key-checking=false",
            "--tunnel",
            "10.0.0.1",
            "ssh",
            "-A",
            "--unit",
            "web",
            "uptime",
        ]);
        assert!(!cli.strict_host_key_checking);
        assert_eq!(cli.tunnel.as_deref(), Some("10.0.0.1"));
        assert_eq!(cli.ssh_username, "core");
        let Command::Ssh {
            unit,
            forward_agent,
            args,
            ..
        } = cli.command.expect("a command")
        else {
            panic!("not ssh");
        };
        assert_eq!(unit.as_deref(), Some("web"));
        assert!(forward_agent);
        assert_eq!(args, ["uptime"]);
        assert!(parse(&["list-machines"]).strict_host_key_checking);
    }

    #[test]
    fn numeric_flags_out_of_range_are_refused_not_a_panic() {
        let cli = parse(&["list-units"]);
        assert_eq!(cli.request_timeout, Duration::from_secs(3));
        assert_eq!(cli.ssh_timeout, 10.0);
        let cli = parse(&[
            "--request-timeout",
            "0.5",
            "--ssh-timeout",
            "0",
            "list-units",
        ]);
        assert_eq!(cli.request_timeout, Duration::from_millis(500));
        assert_eq!(cli.ssh_timeout, 0.0);
        assert_eq!(
            parse(&["--request-timeout", "86400", "list-units"]).request_timeout,
            Duration::from_secs(86_400)
        );
        for bad in [
            &["--request-timeout", "1e300", "list-units"][..],
            &["--request-timeout", "86401", "list-units"],
            &["--request-timeout", "0", "list-units"],
            &["--request-timeout", "1e-300", "list-units"],
            &["--request-timeout=-1", "list-units"],
            &["--request-timeout", "NaN", "list-units"],
            &["--request-timeout", "inf", "list-units"],
            &["--request-timeout", "soon", "list-units"],
            &["--ssh-timeout", "1e300", "list-units"],
            &["--ssh-timeout=-1", "list-units"],
            &["--ssh-timeout", "NaN", "list-units"],
            &["start", "--block-attempts=-1", "x"],
            &["start", "--block-attempts", "99999999999", "x"],
            &["journal", "-n", "100001", "x"],
            &["journal", "-n", "99999999999", "x"],
        ] {
            let mut argv = vec!["fleetctl"];
            argv.extend_from_slice(bad);
            let err = Cli::try_parse_from(argv).expect_err(&format!("{bad:?}"));
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}: {err}"
            );
        }
        // The longest wait --block-attempts can ask for still fits an Instant.
        let Command::Start { block, .. } =
            command(&["start", "--block-attempts", "4294967295", "x"])
        else {
            panic!("not start");
        };
        let _ = tokio::time::Instant::now() + Duration::from_millis(500) * block.block_attempts;
    }

    #[test]
    fn the_tunnel_help_says_what_the_tunnel_does() {
        // It once claimed to carry fleet and etcd traffic; it is only ssh's jump host.
        let command = <Cli as clap::CommandFactory>::command();
        let help = command
            .get_arguments()
            .find(|a| a.get_id() == "tunnel")
            .and_then(|a| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(help.contains("ssh -J"), "{help}");
        assert!(!help.contains("etcd"), "{help}");
        let cli = parse(&["--tunnel", "bastion:2222", "ssh", "f1ee7001"]);
        let options = commands::SshOptions {
            username: cli.ssh_username,
            strict_host_key_checking: true,
            known_hosts_file: "/dev/null".into(),
            tunnel: cli.tunnel,
            forward_agent: false,
            timeout: cli.ssh_timeout,
        };
        let args = commands::ssh_args(&options, "10.0.0.1", &[]);
        let jump = args.iter().position(|a| a == "-J").expect("-J");
        assert_eq!(args[jump + 1], "core@bastion:2222");
    }

    #[test]
    fn flags_kept_for_compatibility_are_accepted() {
        // fleet's `journal --sudo` ran journalctl with sudo over ssh; here fleetd reads it.
        let Command::Journal { sudo, unit, .. } = command(&["journal", "--sudo", "hello"]) else {
            panic!("not journal");
        };
        assert!(sudo);
        assert_eq!(unit, "hello");
        let Command::Status { no_block, units } = command(&["status", "--no-block", "a", "b"])
        else {
            panic!("not status");
        };
        assert!(no_block);
        assert_eq!(units, ["a", "b"]);
        for (command, flag) in [("journal", "sudo"), ("status", "no_block")] {
            let root = <Cli as clap::CommandFactory>::command();
            let help = root
                .find_subcommand(command)
                .and_then(|c| c.get_arguments().find(|a| a.get_id() == flag))
                .and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(help.contains("compatibility"), "{command} --{flag}: {help}");
        }
    }

    #[test]
    fn journal_flags() {
        let Command::Journal {
            lines,
            follow,
            unit,
            machine,
            ..
        } = command(&["journal", "-n", "5", "-f", "hello"])
        else {
            panic!("not journal");
        };
        assert_eq!(
            (lines, follow, unit.as_str(), machine),
            (5, true, "hello", None)
        );
        let Command::Journal {
            lines,
            follow,
            sudo,
            ..
        } = command(&["journal", "hello"])
        else {
            panic!("not journal");
        };
        assert_eq!((lines, follow, sudo), (10, false, false));
        for bad in [
            &["journal", "-n", "0", "x"][..],
            &["journal", "a", "b"],
            &["journal"],
        ] {
            let mut argv = vec!["fleetctl"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn events_flags() {
        let Command::Events {
            listing,
            machine,
            follow,
            limit,
            unit,
        } = command(&[
            "events",
            "-f",
            "-n",
            "20",
            "--machine",
            "f1ee7001",
            "--full",
            "web",
        ])
        else {
            panic!("not events");
        };
        assert_eq!(
            (machine.as_deref(), follow, limit, unit.as_deref()),
            (Some("f1ee7001"), true, Some(20), Some("web"))
        );
        assert!(listing.full && !listing.no_legend);
        let Command::Events {
            listing,
            machine,
            follow,
            limit,
            unit,
        } = command(&["events", "--no-legend", "--follow", "--limit", "3"])
        else {
            panic!("not events");
        };
        assert_eq!((machine, follow, limit, unit), (None, true, Some(3), None));
        assert!(listing.no_legend);
        for bad in [
            &["events", "-n", "0"][..],
            &["events", "--limit", "10001"],
            &["events", "a", "b"],
            &["events", "--machine"],
        ] {
            let mut argv = vec!["fleetctl"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}

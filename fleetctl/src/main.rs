//! fleetctl: edit the cluster's desired state and read its current state, through fleetd's API.

mod commands;
mod table;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "fleetctl",
    version,
    about = "fleetctl is a command line driven interface to the cluster wide CoreOS init system."
)]
struct Cli {
    /// Location of the fleet API: unix:///path, a bare /path, or http://host:port.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_ENDPOINT",
        default_value = "unix:///var/run/fleet.sock"
    )]
    endpoint: String,
    /// Amount of time in seconds to allow a single request before considering it failed.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_REQUEST_TIMEOUT",
        default_value_t = 3.0
    )]
    request_timeout: f64,
    #[command(subcommand)]
    command: Command,
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
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Upload one or more units to the cluster without starting them.
    Submit {
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Schedule one or more units in the cluster, first submitting them if necessary.
    Load {
        #[command(flatten)]
        block: Block,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Start one or more units in the cluster, first submitting and loading them if necessary.
    Start {
        #[command(flatten)]
        block: Block,
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
    /// Output the contents of a submitted unit.
    Cat { unit: String },
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
    /// Enumerate the current hosts in the cluster.
    ListMachines {
        #[command(flatten)]
        listing: Listing,
    },
    /// Print the version and exit.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Version) {
        println!("fleetctl version {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if !(cli.request_timeout.is_finite() && cli.request_timeout > 0.0) {
        eprintln!("--request-timeout must be a positive number of seconds");
        return ExitCode::from(1);
    }
    let client =
        match fleet_api::Client::new(&cli.endpoint, Duration::from_secs_f64(cli.request_timeout)) {
            Ok(c) => c,
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
    let ctl = commands::Ctl::new(client);
    let code = runtime.block_on(async {
        match cli.command {
            Command::Submit { units } => ctl.submit(&units).await,
            Command::Load { block, units } => ctl.load(&units, block).await,
            Command::Start { block, units } => ctl.start(&units, block).await,
            Command::Stop { block, units } => ctl.stop(&units, block).await,
            Command::Unload { block, units } => ctl.unload(&units, block).await,
            Command::Destroy { units } => ctl.destroy(&units).await,
            Command::Cat { unit } => ctl.cat(&unit).await,
            Command::ListUnits { listing } => ctl.list_units(&listing).await,
            Command::ListUnitFiles { listing } => ctl.list_unit_files(&listing).await,
            Command::ListMachines { listing } => ctl.list_machines(&listing).await,
            Command::Version => 0,
        }
    });
    ExitCode::from(code)
}

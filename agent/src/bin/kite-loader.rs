//! `kite-loader`: see [`kite_agent::loader`].
use std::{
    io::Write as _,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
};

use clap::Parser as _;
use kite_agent::loader::{Args, run};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(msg) =
        kite_agent::daemon::flags::check_budget(args.max_endpoints, args.endpoint_budget)
    {
        use clap::CommandFactory as _;
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit();
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, rec| writeln!(buf, "[{}] [{}] {}", rec.level(), rec.target(), rec.args()))
        .target(env_logger::Target::Stdout)
        .init();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("kite-loader: cannot handle signal {sig}: {e}");
        }
    }
    match run(&args, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kite-loader: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

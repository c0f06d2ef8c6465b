//! The `husk` binary: the CLI over the husk library (see `husk::cli`).

fn main() -> std::process::ExitCode {
    let started = std::time::Instant::now();
    husk::cli::main(started)
}

//! The `coffer` command. All the work is in the library; see `coffer --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}

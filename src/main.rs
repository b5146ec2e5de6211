//! The `strata` binary: thin. Parse the command line, hand over to the library, turn
//! errors into a message and an exit code (ripgrep's `main.rs` shape).

mod cli;

fn main() {
    std::process::exit(cli::main());
}

use std::process::ExitCode;

fn main() -> ExitCode {
    culvert::cli::main()
}

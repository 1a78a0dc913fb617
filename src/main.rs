//! The `flotilla` binary; everything lives in the library so that it is compiled once.

fn main() -> std::process::ExitCode {
    flotilla::main_entry()
}

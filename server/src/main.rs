//! The `sandlink` binary: parses the command line and hands over to the LSP server or a CLI command.

fn main() -> std::process::ExitCode {
    sandlink::cli::main()
}

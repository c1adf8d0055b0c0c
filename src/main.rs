fn main() -> std::process::ExitCode {
    n2s_agent::cli::main()
}

//! What every command shares at its outermost level: how an error reaches the user.

/// Runs a command's body. An error prints as one `error: ...` line with its chain of causes (no
/// backtrace, whatever `RUST_BACKTRACE` says) and the process exits with status 1.
pub fn run(body: impl FnOnce() -> anyhow::Result<()>) {
    if let Err(e) = body() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

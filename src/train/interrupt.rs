//! Ctrl-C and SIGTERM during training: the first signal asks the loop to stop after the step in
//! progress and save it; a second one exits at once.
//!
//! The loop polls [`Interrupt::requested`] between micro-batches and after every step, so a
//! stop costs at most one micro-batch of compute: milliseconds to seconds on the GPU and for the
//! demo on a CPU (a large model's micro-batch on a CPU can take minutes; the message says so).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

/// Exit status after an interrupt (128 + SIGINT, as shells report a Ctrl-C).
pub const EXIT_INTERRUPTED: i32 = 130;

/// A shared flag set by the signal handler (or by a test).
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicUsize>);

impl Interrupt {
    /// A flag no signal sets (tests, or library callers that stop runs themselves).
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// Installs the process's SIGINT / SIGTERM / SIGHUP handler: the first signal sets the flag
    /// and prints one line saying that the run stops after the current micro-batch; the second
    /// exits with status [`EXIT_INTERRUPTED`] at once, saving nothing more. Call once per
    /// process.
    pub fn install() -> Result<Interrupt> {
        let flag = Interrupt::new();
        let f = flag.clone();
        ctrlc::set_handler(move || {
            if f.0.fetch_add(1, Ordering::SeqCst) == 0 {
                eprintln!(
                    "\ninterrupt: stopping after the micro-batch in progress and saving a \
                     checkpoint of the last completed step (interrupt again to exit at once, \
                     without saving)"
                );
            } else {
                eprintln!("\ninterrupt: exiting at once; the last saved checkpoint is kept");
                std::process::exit(EXIT_INTERRUPTED);
            }
        })
        .context("installing the Ctrl-C / SIGTERM handler")?;
        Ok(flag)
    }

    /// Sets the flag, as the first signal does.
    pub fn request(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

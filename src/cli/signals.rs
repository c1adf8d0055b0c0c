//! SIGINT, SIGTERM and SIGHUP: an interrupted run says, in one line, what it
//! left and how to go on, then dies of the signal as it would have (so a
//! shell or systemd sees the same status). Nothing else is done in the
//! handler: every run is safe to kill at any point by design (what the
//! backend confirmed is kept, a restore never leaves half a file under its
//! name), so the line is all an operator needs.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// `watch`: a signal while it waits asks it to stop (it exits 0 at once);
/// one while a backup runs stops that backup as any backup is stopped.
static WATCHING: AtomicBool = AtomicBool::new(false);
static WATCH_BUSY: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

/// From now on, a signal while not busy only asks the loop to stop.
pub fn watch_mode() {
    WATCHING.store(true, Ordering::Release);
}

/// Whether a backup is in flight (a signal then ends the process).
pub fn set_busy(busy: bool) {
    WATCH_BUSY.store(busy, Ordering::Release);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::Acquire)
}

static MESSAGE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static MESSAGE_LEN: AtomicUsize = AtomicUsize::new(0);

/// What an interrupted run of this verb left, and the command that goes on.
pub fn message_for(verb: &str) -> String {
    let what = match verb {
        "backup" => {
            "what the backend confirmed is kept; run the same backup again and it resumes where this one stopped"
        }
        "restore" => {
            "the target holds the files placed so far (and perhaps .NAME.n2s-partial files); run the same restore again with --overwrite to finish it"
        }
        "prune" => "the repository stays readable; run prune again to finish what this run started",
        "forget" => "the repository stays readable; run forget again to finish",
        "verify" => "nothing was changed by the checks run so far; run verify again",
        "catalog" => "the local catalog may be incomplete; run catalog rebuild again",
        "watch" => {
            "the backup in progress stopped; what the backend confirmed is kept, and the next backup or watch resumes it"
        }
        _ => "run the same command again",
    };
    format!("n2s-agent: interrupted ({verb}): {what}\n")
}

extern "C" fn on_signal(sig: libc::c_int) {
    if WATCHING.load(Ordering::Acquire) && !WATCH_BUSY.load(Ordering::Acquire) {
        // Atomic stores are async-signal-safe; the loop sees it within its tick.
        STOP.store(true, Ordering::Release);
        return;
    }
    let p = MESSAGE.load(Ordering::Acquire);
    let n = MESSAGE_LEN.load(Ordering::Acquire);
    // SAFETY: write(2), signal(2) and raise(3) are async-signal-safe; the
    // message was leaked before the handler was installed and never freed.
    unsafe {
        if !p.is_null() {
            let _ = libc::write(2, p as *const libc::c_void, n);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Install the handlers, with the line an interruption of `verb` prints.
pub fn install(verb: &str) {
    let msg: &'static mut [u8] = Box::leak(message_for(verb).into_bytes().into_boxed_slice());
    MESSAGE_LEN.store(msg.len(), Ordering::Release);
    MESSAGE.store(msg.as_mut_ptr(), Ordering::Release);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

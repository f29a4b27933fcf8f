//! Signals as a readable file descriptor (the self-pipe trick): the
//! handler only writes the signal number to a pipe the event loop watches.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; a full pipe drops the byte,
        // which is fine because one pending byte already wakes the loop.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

pub struct SignalPipe {
    read_fd: RawFd,
}

pub const WATCHED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD];

impl SignalPipe {
    pub fn install(registry: &Registry, token: Token) -> io::Result<SignalPipe> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        WRITE_FD.store(fds[1], Ordering::Relaxed);
        for sig in WATCHED {
            // SAFETY: installing a handler that only calls write(2).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        registry.register(&mut SourceFd(&fds[0]), token, Interest::READABLE)?;
        Ok(SignalPipe { read_fd: fds[0] })
    }

    /// The signals received since the last call, in order.
    pub fn drain(&self) -> Vec<libc::c_int> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reading into a local buffer of the given size.
            let n = unsafe { libc::read(self.read_fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return got;
            }
            got.extend(buf[..n as usize].iter().map(|&b| b as libc::c_int));
        }
    }
}

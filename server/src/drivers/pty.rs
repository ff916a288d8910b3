//! Pseudo-terminals opened by sandlink's own processes: the local agent's runs (allocated inside the sandbox:
//! bubblewrap's own `/dev/pts`, or the host's under Landlock, always a new one) and the `ssh -tt` client of an ssh
//! terminal (whose size ssh passes on). Sized, and relayed to a run's pipes, so a terminal run reaches the engine
//! through the same pipes as any other.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::protocol::PtySize;

/// Opens a new pseudo-terminal of `size`: its controlling side (kept by the agent) and the run's side.
pub fn open(size: PtySize) -> std::io::Result<(File, OwnedFd)> {
    // SAFETY (whole function): plain calls on descriptors this function owns; the name buffer is ours and sized.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let master = OwnedFd::from_raw_fd(master);
        if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if slave < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let slave = OwnedFd::from_raw_fd(slave);
        set_size(master.as_raw_fd(), size)?;
        Ok((File::from(master), slave))
    }
}

/// Sets a terminal's window size; the kernel sends SIGWINCH to its foreground process group.
pub fn set_size(terminal: RawFd, size: PtySize) -> std::io::Result<()> {
    let window = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize we own from a descriptor the caller holds open.
    if unsafe { libc::ioctl(terminal, libc::TIOCSWINSZ, &window) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the terminal on stdin the calling process's controlling terminal. Call only between fork and exec, after
/// `setsid` (the confinement's first step): it is one system call.
pub fn take_as_controlling_terminal() -> std::io::Result<()> {
    // SAFETY: TIOCSCTTY on stdin with an integer argument.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Copies the server's input pipe into the terminal and the terminal's output into the server's output pipe, each
/// on a thread of its own, until either side closes. The output pipe closes once every program holding the
/// terminal has closed it (the kernel then answers `EIO`), which is how the server sees the output end.
pub fn relay(master: std::sync::Arc<File>, input: OwnedFd, output: OwnedFd) {
    let writer = master.clone();
    std::thread::spawn(move || {
        let mut input = File::from(input);
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let count = match input.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(count) => count,
            };
            if (&*writer).write_all(&buffer[..count]).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        let mut output = File::from(output);
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let count = match (&*master).read(&mut buffer) {
                Ok(0) => break,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
                Ok(count) => count,
            };
            if output.write_all(&buffer[..count]).is_err() {
                break;
            }
        }
    });
}

//! The UNIX peer's credentials (`SO_PEERCRED`).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use super::PeerIdentity;

/// The uid and pid of the process at the other end of `stream`, as the
/// kernel recorded them at `connect` time.
pub fn unix_peer(stream: &UnixStream) -> io::Result<PeerIdentity> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = libc::socklen_t::try_from(size_of::<libc::ucred>()).expect("small struct");
    // SAFETY: `cred` is a valid, writable ucred and `len` its exact size; the
    // fd is open for the duration of the call (borrowed from `stream`).
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerIdentity::Unix {
        uid: cred.uid,
        pid: cred.pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketpair_peer_is_us() {
        let (a, _b) = UnixStream::pair().unwrap();
        let PeerIdentity::Unix { uid, pid } = unix_peer(&a).unwrap() else {
            panic!("unix peer expected");
        };
        assert_eq!(uid, crate::kms::fsutil::effective_uid());
        assert_eq!(pid, i32::try_from(std::process::id()).unwrap());
    }
}

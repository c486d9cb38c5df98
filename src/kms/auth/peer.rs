//! The UNIX peer's identity for the key service (`SO_PEERCRED`, see
//! [`crate::peer`]).

use std::io;
use std::os::unix::net::UnixStream;

use super::PeerIdentity;

/// The uid and pid of the process at the other end of `stream`, as the
/// kernel recorded them at `connect` time.
pub fn unix_peer(stream: &UnixStream) -> io::Result<PeerIdentity> {
    let cred = crate::peer::peer_credentials(stream)?;
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

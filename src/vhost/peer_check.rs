//! Who may drive the device. The socket file's mode keeps other users from
//! connecting at all (see `socket_access`); on top of that, every accepted
//! connection's peer (`SO_PEERCRED`) is checked against the allowed users
//! and groups before a vhost-user message is read, and a stranger's
//! connection is closed at once with a log line. This holds however the
//! socket file's mode or group is set, or if a stranger got a connected
//! descriptor passed to it.

use crate::peer::PeerCredentials;

/// The users and groups whose processes may connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedPeers {
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl AllowedPeers {
    /// Exactly these users, and processes whose effective group is one of
    /// these groups.
    pub fn new(uids: Vec<u32>, gids: Vec<u32>) -> Self {
        Self { uids, gids }
    }

    /// The default: this process's own user, and root.
    pub fn owner_and_root() -> Self {
        // SAFETY: geteuid(2) only reads the process's effective uid.
        let own = unsafe { libc::geteuid() };
        let mut uids = vec![own];
        if own != 0 {
            uids.push(0);
        }
        Self::new(uids, Vec::new())
    }

    /// Whether `peer` may connect.
    pub fn allows(&self, peer: &PeerCredentials) -> bool {
        self.uids.contains(&peer.uid) || self.gids.contains(&peer.gid)
    }
}

impl Default for AllowedPeers {
    fn default() -> Self {
        Self::owner_and_root()
    }
}

impl std::fmt::Display for AllowedPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uids {:?}, gids {:?}", self.uids, self.gids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> PeerCredentials {
        PeerCredentials { pid: 1, uid, gid }
    }

    #[test]
    fn a_peer_is_allowed_by_its_uid_or_its_gid() {
        let allowed = AllowedPeers::new(vec![107], vec![36]);
        assert!(allowed.allows(&peer(107, 5)));
        assert!(allowed.allows(&peer(5, 36)));
        assert!(!allowed.allows(&peer(5, 5)));
        assert!(!allowed.allows(&peer(0, 0)), "root only when listed");
    }

    #[test]
    fn the_default_is_our_user_and_root() {
        let allowed = AllowedPeers::owner_and_root();
        // SAFETY: geteuid(2) only reads the process's effective uid.
        let own = unsafe { libc::geteuid() };
        assert!(allowed.allows(&peer(own, 12345)));
        assert!(allowed.allows(&peer(0, 12345)));
        assert!(!allowed.allows(&peer(65534, 65534)) || own == 65534);
    }
}

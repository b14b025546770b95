//! Whom a deployment is for, as this node's user database says.
//!
//! The uid comes from the kernel (`getuid`, `SO_PEERCRED`) or from the batch
//! system (Slurm's `SLURM_JOB_UID`), never from a request; the user's name
//! and every group it is in come from the system's user database (passwd,
//! group, or LDAP/SSSD through NSS), never from the job's environment. VO
//! membership (`site.yaml`'s `unix_groups` and `users`) is checked against
//! this, in `policy`.

use std::ffi::CString;
use std::fmt;

use nix::unistd::{Gid, Group, Uid, User};

/// An ordinary (non-root) user, as the user database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixUser {
    pub uid: u32,
    pub name: String,
    /// Primary group.
    pub gid: u32,
    /// Every group the user is in (primary included), as gids.
    pub gids: Vec<u32>,
    /// The same groups by name (a gid without a name is left out).
    pub groups: Vec<String>,
}

/// Whom a deployment acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// uid 0: root at a terminal, or a root job. Root can rewrite
    /// `site.yaml`, so it may act for any VO.
    Root,
    User(UnixUser),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "uid {uid} is not in this node's user database, so it is a member of no VO \
         (every job owner must be known to the node: passwd, LDAP or SSSD)"
    )]
    Unknown { uid: u32 },
    #[error("cannot look up uid {uid} in this node's user database: {reason}")]
    Lookup { uid: u32, reason: String },
}

impl Owner {
    /// The owner of uid `uid`, looked up now.
    pub fn of_uid(uid: u32) -> Result<Owner, OwnerError> {
        if uid == 0 {
            return Ok(Owner::Root);
        }
        let lookup = |reason: String| OwnerError::Lookup { uid, reason };
        let user = User::from_uid(Uid::from_raw(uid))
            .map_err(|e| lookup(e.to_string()))?
            .ok_or(OwnerError::Unknown { uid })?;
        let name = CString::new(user.name.as_bytes()).map_err(|e| lookup(e.to_string()))?;
        let gids: Vec<u32> = nix::unistd::getgrouplist(&name, user.gid)
            .map_err(|e| lookup(format!("its groups: {e}")))?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        let groups = gids
            .iter()
            .filter_map(|&g| Group::from_gid(Gid::from_raw(g)).ok().flatten())
            .map(|g| g.name)
            .collect();
        Ok(Owner::User(UnixUser {
            uid,
            name: user.name,
            gid: user.gid.as_raw(),
            gids,
            groups,
        }))
    }

    /// The user running this process (`sd run`, `sd start` act for it).
    pub fn current() -> Result<Owner, OwnerError> {
        Owner::of_uid(nix::unistd::getuid().as_raw())
    }

    pub fn uid(&self) -> u32 {
        match self {
            Owner::Root => 0,
            Owner::User(u) => u.uid,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Root => f.write_str("root"),
            Owner::User(u) => write!(f, "user {} (uid {})", u.name, u.uid),
        }
    }
}

/// The name of uid `uid` if the user database knows it, for listings.
pub fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_root_and_users_come_with_their_groups() {
        assert_eq!(Owner::of_uid(0).unwrap(), Owner::Root);
        // nobody exists on every Debian system; its primary group is nogroup.
        let Owner::User(nobody) = Owner::of_uid(65534).unwrap() else {
            panic!("nobody is not root")
        };
        assert_eq!(nobody.name, "nobody");
        assert!(nobody.gids.contains(&65534), "{nobody:?}");
        assert!(nobody.groups.iter().any(|g| g == "nogroup"), "{nobody:?}");
        assert_eq!(
            Owner::of_uid(65534).unwrap().to_string(),
            "user nobody (uid 65534)"
        );
    }

    #[test]
    fn an_unknown_uid_is_no_member_of_anything() {
        // Far above any allocated uid, below the (uid_t)-1 "no uid".
        let e = Owner::of_uid(3_999_999_999).unwrap_err();
        assert_eq!(e, OwnerError::Unknown { uid: 3_999_999_999 });
        assert!(e.to_string().contains("member of no VO"), "{e}");
    }
}

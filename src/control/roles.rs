//! Who may do what on control.sock: the peer's uid and groups (from the kernel, never from
//! the request) mapped to roles and org scopes from `[roles]`.
//!
//! Roles are distinct (an approver cannot cancel, an operator cannot approve); an admin may do
//! everything. Group names are resolved to gids once, at start: a name that does not resolve
//! grants nothing (fail closed), and is logged so the operator can fix the config.

use std::collections::BTreeSet;
use std::fmt;

use crate::config::{RoleMembers, RolesConfig};

/// A role on control.sock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Approver,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

/// The verbs of control.sock, and who may use each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Pending,
    Approve,
    Deny,
    Cancel,
    HaltResolve,
    /// Halt every node of the fleet.
    HaltFleet,
    /// Clear the fleet halt.
    HaltResolveFleet,
    Reload,
}

impl Verb {
    /// The name on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Pending => "pending",
            Verb::Approve => "approve",
            Verb::Deny => "deny",
            Verb::Cancel => "cancel",
            Verb::HaltResolve => "halt-resolve",
            Verb::HaltFleet => "halt-fleet",
            Verb::HaltResolveFleet => "halt-resolve-fleet",
            Verb::Reload => "reload",
        }
    }

    /// The audit event recorded for every use of the verb, allowed or not.
    pub fn event_type(self) -> &'static str {
        match self {
            Verb::Pending => "control.pending",
            Verb::Approve => "control.approve",
            Verb::Deny => "control.deny",
            Verb::Cancel => "control.cancel",
            Verb::HaltResolve => "control.halt_resolve",
            Verb::HaltFleet => "control.halt_fleet",
            Verb::HaltResolveFleet => "control.halt_resolve_fleet",
            Verb::Reload => "control.reload",
        }
    }

    /// Roles allowed to use the verb; admin is always among them.
    pub fn allowed_roles(self) -> &'static [Role] {
        match self {
            Verb::Pending => &[Role::Viewer, Role::Operator, Role::Approver, Role::Admin],
            Verb::Approve | Verb::Deny => &[Role::Approver, Role::Admin],
            Verb::Cancel => &[Role::Operator, Role::Admin],
            Verb::HaltResolve | Verb::HaltFleet | Verb::HaltResolveFleet | Verb::Reload => {
                &[Role::Admin]
            }
        }
    }

    /// Verbs that act on one execution, and so are subject to org scopes.
    pub fn acts_on_execution(self) -> bool {
        match self {
            Verb::Approve | Verb::Deny | Verb::Cancel => true,
            Verb::Pending
            | Verb::HaltResolve
            | Verb::HaltFleet
            | Verb::HaltResolveFleet
            | Verb::Reload => false,
        }
    }

    pub fn parse(name: &str) -> Option<Verb> {
        [
            Verb::Pending,
            Verb::Approve,
            Verb::Deny,
            Verb::Cancel,
            Verb::HaltResolve,
            Verb::HaltFleet,
            Verb::HaltResolveFleet,
            Verb::Reload,
        ]
        .into_iter()
        .find(|verb| verb.as_str() == name)
    }
}

/// The connecting process as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// Primary gid (SO_PEERCRED) and supplementary groups (`/proc/PID/status`).
    pub gids: BTreeSet<u32>,
}

impl Peer {
    /// Builds the peer from SO_PEERCRED; supplementary groups come from the peer's
    /// `/proc/PID/status`, and only when that process still has the peer's uid (a pid
    /// reused since the connect must not lend its groups).
    pub fn from_credentials(uid: u32, gid: u32, pid: Option<i32>) -> Peer {
        let mut gids = BTreeSet::from([gid]);
        if let Some(pid) = pid {
            let path = format!("/proc/{pid}/status");
            match std::fs::read_to_string(&path) {
                Ok(text) => match supplementary_groups(&text, uid) {
                    Some(groups) => gids.extend(groups),
                    None => tracing::warn!(
                        uid,
                        pid,
                        "peer's /proc status does not match its credentials; supplementary groups ignored"
                    ),
                },
                // Under the shipped unit (ProtectProc=invisible) other users' processes are
                // hidden: take the peer user's groups from the group database instead.
                Err(error) => match groups_of_user(uid, gid) {
                    Some(groups) => gids.extend(groups),
                    None => {
                        tracing::warn!(uid, pid, error = %error, "cannot read the peer's groups; only its primary gid counts")
                    }
                },
            }
        }
        Peer { uid, gids }
    }
}

/// The groups the user `uid` belongs to in the group database (`getgrouplist(3)`).
fn groups_of_user(uid: u32, gid: u32) -> Option<BTreeSet<u32>> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    let name = std::ffi::CString::new(user.name).ok()?;
    let groups = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).ok()?;
    Some(groups.into_iter().map(|g| g.as_raw()).collect())
}

/// What one peer may do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Grant {
    pub roles: BTreeSet<Role>,
    /// `None`: not restricted by org. `Some(orgs)`: only executions of these orgs.
    pub orgs: Option<BTreeSet<String>>,
}

impl Grant {
    pub fn permits(&self, verb: Verb) -> bool {
        self.roles.contains(&Role::Admin)
            || verb
                .allowed_roles()
                .iter()
                .any(|role| self.roles.contains(role))
    }

    pub fn may_act_on_org(&self, org: &str) -> bool {
        self.orgs.as_ref().is_none_or(|orgs| orgs.contains(org))
    }

    /// "admin, approver" or "none", for refusal messages.
    pub fn describe_roles(&self) -> String {
        if self.roles.is_empty() {
            return "none".to_owned();
        }
        self.roles
            .iter()
            .map(|role| role.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `[roles]` with group names resolved to gids.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    members: Vec<(Role, Members)>,
    org_scopes: Vec<(Members, BTreeSet<String>)>,
}

#[derive(Debug, Clone, Default)]
struct Members {
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
}

impl Members {
    fn includes(&self, peer: &Peer) -> bool {
        self.uids.contains(&peer.uid) || !self.gids.is_disjoint(&peer.gids)
    }
}

impl Roles {
    /// Resolves group names with the system's group database.
    pub fn from_config(config: &RolesConfig) -> Roles {
        Roles::resolve(config, |name| {
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .map(|group| group.gid.as_raw())
        })
    }

    /// Resolves group names with `lookup`; a name it does not know grants nothing.
    pub fn resolve(config: &RolesConfig, lookup: impl Fn(&str) -> Option<u32>) -> Roles {
        let members = |role: &str, members: &RoleMembers| Members {
            uids: members.uids.clone(),
            gids: resolve_groups(role, &members.groups, &lookup),
        };
        Roles {
            members: vec![
                (Role::Admin, members("admin", &config.admin)),
                (Role::Approver, members("approver", &config.approver)),
                (Role::Operator, members("operator", &config.operator)),
                (Role::Viewer, members("viewer", &config.viewer)),
            ],
            org_scopes: config
                .orgs
                .iter()
                .map(|scope| {
                    let who = Members {
                        uids: scope.uids.clone(),
                        gids: resolve_groups("orgs", &scope.groups, &lookup),
                    };
                    (who, scope.orgs.clone())
                })
                .collect(),
        }
    }

    pub fn grant(&self, peer: &Peer) -> Grant {
        let roles = self
            .members
            .iter()
            .filter(|(_, members)| members.includes(peer))
            .map(|(role, _)| *role)
            .collect();
        let mut scoped = self
            .org_scopes
            .iter()
            .filter(|(members, _)| members.includes(peer))
            .peekable();
        let orgs = scoped
            .peek()
            .is_some()
            .then(|| scoped.flat_map(|(_, orgs)| orgs.iter().cloned()).collect());
        Grant { roles, orgs }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}", self.uid)
    }
}

fn resolve_groups(
    role: &str,
    names: &BTreeSet<String>,
    lookup: &impl Fn(&str) -> Option<u32>,
) -> BTreeSet<u32> {
    names
        .iter()
        .filter_map(|name| {
            let gid = lookup(name);
            if gid.is_none() {
                tracing::warn!(role, group = %name, "[roles] names a group that does not exist; it grants nothing");
            }
            gid
        })
        .collect()
}

/// The `Groups:` of a `/proc/PID/status` text, provided its effective uid is `uid`.
fn supplementary_groups(status: &str, uid: u32) -> Option<BTreeSet<u32>> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::split_whitespace)
    };
    // Uid: real, effective, saved, filesystem. SO_PEERCRED reports the effective uid.
    let effective: u32 = field("Uid:")?.nth(1)?.parse().ok()?;
    if effective != uid {
        return None;
    }
    field("Groups:")?
        .map(|gid| gid.parse().ok())
        .collect::<Option<BTreeSet<u32>>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OrgScope;

    fn config() -> RolesConfig {
        RolesConfig {
            approver: RoleMembers {
                uids: BTreeSet::from([2001]),
                groups: BTreeSet::from(["approvers".into(), "no-such-group".into()]),
            },
            operator: RoleMembers {
                uids: BTreeSet::from([2003]),
                groups: BTreeSet::new(),
            },
            orgs: vec![OrgScope {
                uids: BTreeSet::new(),
                groups: BTreeSet::from(["acme-soc".into()]),
                orgs: BTreeSet::from(["acme".into()]),
            }],
            // The default admin (root alone) and no viewer.
            ..RolesConfig::default()
        }
    }

    fn roles() -> Roles {
        Roles::resolve(&config(), |name| match name {
            "approvers" => Some(500),
            "acme-soc" => Some(600),
            _ => None,
        })
    }

    fn peer(uid: u32, gids: &[u32]) -> Peer {
        Peer {
            uid,
            gids: gids.iter().copied().collect(),
        }
    }

    #[test]
    fn roles_come_from_uid_or_any_group() {
        let roles = roles();
        assert_eq!(
            roles.grant(&peer(2001, &[100])).roles,
            BTreeSet::from([Role::Approver])
        );
        assert_eq!(
            roles.grant(&peer(4000, &[100, 500])).roles,
            BTreeSet::from([Role::Approver])
        );
        assert!(roles.grant(&peer(4000, &[100])).roles.is_empty());
    }

    #[test]
    fn roles_are_distinct_but_admin_may_do_everything() {
        let roles = roles();
        let approver = roles.grant(&peer(2001, &[100]));
        assert!(approver.permits(Verb::Approve) && approver.permits(Verb::Pending));
        assert!(!approver.permits(Verb::Cancel) && !approver.permits(Verb::HaltResolve));
        let operator = roles.grant(&peer(2003, &[100]));
        assert!(operator.permits(Verb::Cancel) && !operator.permits(Verb::Deny));
        let admin = roles.grant(&peer(0, &[0]));
        for verb in [
            "pending",
            "approve",
            "deny",
            "cancel",
            "halt-resolve",
            "reload",
        ] {
            assert!(admin.permits(Verb::parse(verb).unwrap()), "{verb}");
        }
        let nobody = roles.grant(&peer(4000, &[100]));
        assert!(!nobody.permits(Verb::Pending));
        assert_eq!(nobody.describe_roles(), "none");
    }

    #[test]
    fn an_unknown_group_grants_nothing() {
        // "no-such-group" did not resolve: no gid can match it, not even a huge one.
        let roles = roles();
        assert!(roles.grant(&peer(4000, &[u32::MAX])).roles.is_empty());
    }

    #[test]
    fn org_scope_applies_only_to_the_peers_it_names() {
        let roles = roles();
        let scoped = roles.grant(&peer(2001, &[600]));
        assert!(scoped.may_act_on_org("acme"));
        assert!(!scoped.may_act_on_org("globex"));
        let unscoped = roles.grant(&peer(2001, &[100]));
        assert!(unscoped.may_act_on_org("globex"));
    }

    #[test]
    fn supplementary_groups_require_the_peers_uid() {
        let status = "Name:\tcat\nUid:\t1000\t2001\t2001\t2001\nGid:\t100\t100\t100\t100\nGroups:\t27 500 \n";
        assert_eq!(
            supplementary_groups(status, 2001),
            Some(BTreeSet::from([27, 500]))
        );
        assert_eq!(supplementary_groups(status, 1000), None);
        assert_eq!(
            supplementary_groups("Uid:\t5\t5\t5\t5\nGroups:\t\n", 5),
            Some(BTreeSet::new())
        );
        assert_eq!(supplementary_groups("Uid:\t5\t5\t5\t5\n", 5), None);
    }

    #[test]
    fn verbs_round_trip_their_names() {
        for verb in [Verb::Pending, Verb::HaltResolve, Verb::Reload] {
            assert_eq!(Verb::parse(verb.as_str()), Some(verb));
        }
        assert_eq!(Verb::parse("halt_resolve"), None);
    }
}

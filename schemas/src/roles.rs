//! Group roles as a group's events make them ([`Roles`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::event::{EventBody, Role};

/// The owner and admins of a group as its timeline says, folded one event at a time (in seq
/// order): the creator owns it (when they are among its members); a hand-over makes the new
/// owner's predecessor an admin; a removal or the disbanding ends a member's role. The one rule
/// of roles: the sequencer checks against it, and every history adapter lists it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    pub owner: Option<String>,
    pub admins: BTreeSet<String>,
}

impl Roles {
    pub fn apply(&mut self, sender: &str, body: &EventBody) {
        match body {
            EventBody::ConversationCreated { members, .. } => {
                self.owner = members
                    .iter()
                    .any(|member| member == sender)
                    .then(|| sender.to_owned());
            }
            EventBody::RoleChanged { member, role } => match role {
                Role::Owner => {
                    if let Some(previous) = self.owner.replace(member.clone()) {
                        self.admins.insert(previous);
                    }
                    self.admins.remove(member);
                }
                Role::Admin => {
                    self.admins.insert(member.clone());
                }
                Role::Member => {
                    self.admins.remove(member);
                }
            },
            EventBody::MembersRemoved { members } => {
                for member in members {
                    self.admins.remove(member);
                }
            }
            EventBody::ConversationDisbanded { .. } => {
                self.admins.clear();
            }
            _ => {}
        }
    }

    /// `user`'s role.
    pub fn of(&self, user: &str) -> Role {
        if self.owner.as_deref() == Some(user) {
            Role::Owner
        } else if self.admins.contains(user) {
            Role::Admin
        } else {
            Role::Member
        }
    }
}

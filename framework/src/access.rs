//! Who is acting, and what they may do.
//!
//! A [`Principal`] is the authenticated subject of a request (a user with
//! roles), a service acting on its own account (a process manager), or an
//! anonymous visitor. It travels with a command in its
//! [`CommandContext`](crate::CommandContext) and is recorded on every event
//! the command produces as the actor ([`Principal::actor`]).
//!
//! Access is checked in two places, both on the server:
//!
//! - **Commands**: [`Aggregate::authorize`](crate::Aggregate::authorize)
//!   sees the aggregate's current state, the command and the principal, and
//!   may refuse with [`Forbidden`]; the command handler calls it before
//!   `decide`, so a refused command changes nothing.
//! - **Reads**: a [`ViewAccess`] names, for each view, who may read which
//!   documents: everyone, the document's owner (a field of the document, or
//!   its key), or holders of a role. Query services ask it before they
//!   answer and filter what they stream.
//!
//! How a request proves who it is (bearer tokens, see `strata::auth` with
//! the `auth` feature) is separate: anything that turns a credential into a
//! [`Principal`] implements [`Authenticator`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What kind of principal acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person or client authenticated by a token.
    User,
    /// A process of the system acting on its own account (a process
    /// manager, an import, a test).
    Service,
    /// A request that carried no credentials.
    Anonymous,
}

/// Who acts: the subject, its kind and its roles.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    kind: PrincipalKind,
    subject: String,
    roles: BTreeSet<String>,
}

impl Principal {
    /// An authenticated user: `subject` is the token's `sub`.
    pub fn user<R: Into<String>>(
        subject: impl Into<String>,
        roles: impl IntoIterator<Item = R>,
    ) -> Self {
        Principal {
            kind: PrincipalKind::User,
            subject: subject.into(),
            roles: roles.into_iter().map(Into::into).collect(),
        }
    }

    /// A service acting on its own account, e.g. `fulfilment`.
    pub fn service(name: impl Into<String>) -> Self {
        Principal {
            kind: PrincipalKind::Service,
            subject: name.into(),
            roles: BTreeSet::new(),
        }
    }

    /// A visitor without credentials.
    pub fn anonymous() -> Self {
        Principal {
            kind: PrincipalKind::Anonymous,
            subject: String::new(),
            roles: BTreeSet::new(),
        }
    }

    /// The kind of principal.
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    /// The subject: a user's id at its issuer, or a service's name; empty
    /// for an anonymous visitor.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The roles, sorted.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(String::as_str)
    }

    /// True for a user holding `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.kind == PrincipalKind::User && self.roles.contains(role)
    }

    /// True for an authenticated user.
    pub fn is_user(&self) -> bool {
        self.kind == PrincipalKind::User
    }

    /// True for a service of the system.
    pub fn is_service(&self) -> bool {
        self.kind == PrincipalKind::Service
    }

    /// True for a visitor without credentials.
    pub fn is_anonymous(&self) -> bool {
        self.kind == PrincipalKind::Anonymous
    }

    /// True for the user `subject`.
    pub fn is_user_named(&self, subject: &str) -> bool {
        self.kind == PrincipalKind::User && self.subject == subject
    }

    /// What events record as their actor: `user:<subject>`,
    /// `service:<name>` or `anonymous`. The prefix keeps a user whose id
    /// happens to equal a service's name apart from the service.
    pub fn actor(&self) -> String {
        match self.kind {
            PrincipalKind::User => format!("user:{}", self.subject),
            PrincipalKind::Service => format!("service:{}", self.subject),
            PrincipalKind::Anonymous => "anonymous".to_owned(),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.actor())
    }
}

/// A refusal: the principal may not do this. HTTP 403 for an
/// authenticated principal, 401 for an anonymous one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("forbidden: {reason}")]
pub struct Forbidden {
    /// Why, in words fit for the caller (no internals).
    pub reason: String,
}

impl Forbidden {
    /// A refusal with a reason fit for the caller.
    pub fn new(reason: impl Into<String>) -> Self {
        Forbidden {
            reason: reason.into(),
        }
    }

    /// Refuses unless `ok`.
    pub fn unless(ok: bool, reason: impl Into<String>) -> Result<(), Forbidden> {
        if ok {
            Ok(())
        } else {
            Err(Forbidden::new(reason))
        }
    }
}

/// Why a request's credentials were not accepted (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unauthenticated {
    /// No credentials where some are needed.
    #[error("authentication required")]
    Missing,
    /// The credentials are not acceptable. `detail` is for the log, not
    /// for the caller: the caller only learns that the token is invalid.
    #[error("invalid token")]
    Invalid {
        /// Why (for the log).
        detail: String,
    },
}

impl Unauthenticated {
    /// An invalid credential, with the reason for the log.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Unauthenticated::Invalid {
            detail: detail.into(),
        }
    }

    /// The `WWW-Authenticate` challenge to answer with (RFC 6750): no
    /// error code for missing credentials, `invalid_token` otherwise.
    pub fn challenge(&self, realm: &str) -> String {
        match self {
            Unauthenticated::Missing => format!("Bearer realm=\"{realm}\""),
            Unauthenticated::Invalid { .. } => {
                format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")
            }
        }
    }
}

/// Turns a bearer credential into a [`Principal`].
pub trait Authenticator: Send + Sync + 'static {
    /// The principal `token` stands for, or why it is not accepted.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Principal, Unauthenticated>>;
}

/// Who may read a view's documents.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadRule {
    /// Everyone, anonymous visitors included.
    Public,
    /// A document's owner, and users holding any of `roles` (who may also
    /// list and follow the whole view). The owner is the user whose subject
    /// equals the document's `owner` field.
    Owner {
        /// Where the owner's subject is.
        owner: OwnerField,
        /// Roles that read every document.
        roles: Vec<String>,
    },
    /// Users holding any of these roles.
    Roles(Vec<String>),
}

/// Where a document names its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OwnerField {
    /// The document's key is the owner's subject.
    Key,
    /// A JSON pointer into the document (RFC 6901), e.g. `/customer_id`.
    Pointer(String),
}

/// The read rules of every view: the reusable part of "filter reads by
/// owner". A view without a rule is readable by nobody but services, so a
/// new view is private until someone says otherwise.
#[derive(Debug, Clone, Default)]
pub struct ViewAccess {
    rules: HashMap<String, ReadRule>,
}

impl ViewAccess {
    /// No views readable yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `view`'s rule.
    pub fn rule(mut self, view: impl Into<String>, rule: ReadRule) -> Self {
        self.rules.insert(view.into(), rule);
        self
    }

    /// Everyone may read `view`.
    pub fn public(self, view: impl Into<String>) -> Self {
        self.rule(view, ReadRule::Public)
    }

    /// `view`'s documents are read by their owner (named by `owner`) and
    /// by holders of `roles`.
    pub fn owned<R: Into<String>>(
        self,
        view: impl Into<String>,
        owner: OwnerField,
        roles: impl IntoIterator<Item = R>,
    ) -> Self {
        let roles = roles.into_iter().map(Into::into).collect();
        self.rule(view, ReadRule::Owner { owner, roles })
    }

    /// Only holders of `roles` read `view`.
    pub fn roles<R: Into<String>>(
        self,
        view: impl Into<String>,
        roles: impl IntoIterator<Item = R>,
    ) -> Self {
        let roles = roles.into_iter().map(Into::into).collect();
        self.rule(view, ReadRule::Roles(roles))
    }

    /// `view`'s rule, if any.
    pub fn rule_of(&self, view: &str) -> Option<&ReadRule> {
        self.rules.get(view)
    }

    /// Whether `who` may list (or follow) every document of `view`.
    pub fn may_list(&self, who: &Principal, view: &str) -> Result<(), Forbidden> {
        if who.is_service() {
            return Ok(());
        }
        let ok = match self.rules.get(view) {
            Some(ReadRule::Public) => true,
            Some(ReadRule::Owner { roles, .. }) | Some(ReadRule::Roles(roles)) => {
                roles.iter().any(|r| who.has_role(r))
            }
            None => false,
        };
        Forbidden::unless(ok, format!("{view} may not be listed by this principal"))
    }

    /// Whether `who` may read document `key` of `view`, whose content is
    /// `doc` (`None`: no such document). Owners are checked against the
    /// document; for a missing document only the key can name an owner,
    /// so a pointer-owned view answers a missing document as allowed (the
    /// caller then says "not found", which tells nothing).
    pub fn may_read(
        &self,
        who: &Principal,
        view: &str,
        key: &str,
        doc: Option<&Value>,
    ) -> Result<(), Forbidden> {
        if who.is_service() {
            return Ok(());
        }
        let ok = match self.rules.get(view) {
            Some(ReadRule::Public) => true,
            Some(ReadRule::Roles(roles)) => roles.iter().any(|r| who.has_role(r)),
            Some(ReadRule::Owner { owner, roles }) => {
                roles.iter().any(|r| who.has_role(r))
                    || match (owner, doc) {
                        (OwnerField::Key, _) => who.is_user_named(key),
                        (OwnerField::Pointer(p), Some(doc)) => doc
                            .pointer(p)
                            .and_then(Value::as_str)
                            .is_some_and(|o| who.is_user_named(o)),
                        (OwnerField::Pointer(_), None) => who.is_user(),
                    }
            }
            None => false,
        };
        Forbidden::unless(ok, format!("this {view} document belongs to someone else"))
    }

    /// Whether `who` may follow document `key` of `view` before knowing
    /// its content: allowed when a later [`may_read`](Self::may_read) of
    /// each state can still refuse it (owner by pointer), refused when the
    /// rule alone already says no.
    pub fn may_follow(&self, who: &Principal, view: &str, key: &str) -> Result<(), Forbidden> {
        self.may_read(who, view, key, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn access() -> ViewAccess {
        ViewAccess::new()
            .public("catalog")
            .owned(
                "orders",
                OwnerField::Pointer("/customer_id".into()),
                ["staff"],
            )
            .owned("by_customer", OwnerField::Key, ["staff"])
            .roles("dashboard", ["staff"])
    }

    #[test]
    fn actors_name_the_kind_of_principal() {
        assert_eq!(Principal::user("alice", ["customer"]).actor(), "user:alice");
        assert_eq!(
            Principal::service("fulfilment").actor(),
            "service:fulfilment"
        );
        assert_eq!(Principal::anonymous().actor(), "anonymous");
        // A service holds no roles, and a user named like a service is
        // still a user.
        assert!(!Principal::service("staff").has_role("staff"));
        assert!(!Principal::user("fulfilment", ["x"]).is_service());
    }

    #[test]
    fn owners_read_their_documents_and_roles_read_all() {
        let a = access();
        let alice = Principal::user("alice", ["customer"]);
        let bob = Principal::user("bob", ["customer"]);
        let staff = Principal::user("sam", ["staff"]);
        let anon = Principal::anonymous();
        let doc = json!({ "customer_id": "alice" });
        assert!(a.may_read(&alice, "orders", "o1", Some(&doc)).is_ok());
        assert!(a.may_read(&bob, "orders", "o1", Some(&doc)).is_err());
        assert!(a.may_read(&anon, "orders", "o1", Some(&doc)).is_err());
        assert!(a.may_read(&staff, "orders", "o1", Some(&doc)).is_ok());
        assert!(a.may_read(&alice, "by_customer", "alice", None).is_ok());
        assert!(a.may_read(&bob, "by_customer", "alice", None).is_err());
        assert!(a.may_read(&anon, "catalog", "MUG", None).is_ok());
        assert!(a.may_read(&alice, "dashboard", "today", None).is_err());
        assert!(a.may_read(&staff, "dashboard", "today", None).is_ok());
        // A document without an owner field belongs to nobody.
        assert!(a
            .may_read(&alice, "orders", "o2", Some(&json!({})))
            .is_err());
        // A view nobody described is for services only.
        assert!(a.may_read(&staff, "secret", "k", None).is_err());
        assert!(a
            .may_read(&Principal::service("pm"), "secret", "k", None)
            .is_ok());
    }

    #[test]
    fn whole_views_of_private_data_are_for_roles() {
        let a = access();
        let alice = Principal::user("alice", ["customer"]);
        let staff = Principal::user("sam", ["staff"]);
        assert!(a.may_list(&Principal::anonymous(), "catalog").is_ok());
        assert!(a.may_list(&alice, "orders").is_err());
        assert!(a.may_list(&alice, "by_customer").is_err());
        assert!(a.may_list(&staff, "orders").is_ok());
        assert!(a.may_list(&staff, "dashboard").is_ok());
        assert!(a.may_list(&alice, "dashboard").is_err());
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(
            Unauthenticated::Missing.challenge("shop"),
            "Bearer realm=\"shop\""
        );
        assert_eq!(
            Unauthenticated::invalid("expired").challenge("shop"),
            "Bearer realm=\"shop\", error=\"invalid_token\""
        );
        assert_eq!(
            Unauthenticated::invalid("secret detail").to_string(),
            "invalid token"
        );
    }
}

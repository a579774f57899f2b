//! Who may do what (DESIGN.md's access table). A foreign organization answers exactly as a missing
//! one: NOT_FOUND, before any role check, so roles reveal nothing about other tenants.

use entity::organization;
use sea_orm::ConnectionTrait;

use super::{OrganizationId, Role, Viewer};
use crate::error::{AppError, AppResult};
use crate::store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the organization, its usage, history and alerts; subscribe.
    Read,
    /// recordUsage, recordUsageBatch, reverseUsage.
    Record,
    /// changePlan, cancel, reactivate, trials.
    ManageSubscription,
    /// grantCredit, adjustUsage, resetUsage, createOrganization, upsertPlan, organizations.
    Platform,
    /// Read the organization's membership plans, customers, memberships and bookings.
    ReadMemberships,
    /// Manage them: plans, customers, memberships, corrections, linking bookings.
    ManageMemberships,
    /// createBooking and updateBookingStatus.
    Book,
}

pub fn role_allows(viewer: &Viewer, action: Action) -> bool {
    if viewer.platform {
        return true;
    }
    let Some(role) = viewer.role else {
        return false;
    };
    match action {
        // A customer reads only its own records, through the memberships' own checks.
        Action::Read | Action::ReadMemberships => role != Role::Customer,
        Action::Record => matches!(role, Role::Owner | Role::Admin | Role::Service),
        Action::ManageSubscription => matches!(role, Role::Owner | Role::Admin),
        Action::Platform => false,
        Action::ManageMemberships => matches!(role, Role::Owner | Role::Admin),
        Action::Book => matches!(role, Role::Owner | Role::Admin | Role::Service),
    }
}

/// The organization a call is about: `id`, or by default the caller's own.
pub fn target_org(viewer: &Viewer, id: Option<&str>) -> AppResult<OrganizationId> {
    match id {
        Some(s) => OrganizationId::parse(s),
        None => viewer.org_id.ok_or_else(|| {
            AppError::bad_input("organizationId is required for a token without org_id")
        }),
    }
}

/// Loads an organization the viewer may see and checks that the viewer may do `action` on it.
pub async fn authorize<C: ConnectionTrait>(
    db: &C,
    viewer: &Viewer,
    org: OrganizationId,
    action: Action,
) -> AppResult<organization::Model> {
    let found = store::orgs::find(db, viewer.scope(), org)
        .await?
        .ok_or_else(|| AppError::not_found("organization"))?;
    require(viewer, action)?;
    Ok(found)
}

/// Checks that the viewer's role may do `action` (on an organization already found in scope).
pub fn require(viewer: &Viewer, action: Action) -> AppResult<()> {
    if role_allows(viewer, action) {
        return Ok(());
    }
    Err(AppError::forbidden(match action {
        Action::Read => "your role may not read this organization",
        Action::Record => "recording usage needs the OWNER, ADMIN or SERVICE role",
        Action::ManageSubscription => "changing the subscription needs the OWNER or ADMIN role",
        Action::Platform => "this needs a platform-team member",
        Action::ReadMemberships => "your role may not read the organization's memberships",
        Action::ManageMemberships => "managing memberships needs the OWNER or ADMIN role",
        Action::Book => "bookings are created and moved by the OWNER, ADMIN or SERVICE role",
    }))
}

pub fn require_platform(viewer: &Viewer) -> AppResult<()> {
    if viewer.platform {
        Ok(())
    } else {
        Err(AppError::forbidden("this needs a platform-team member"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(role: Role) -> Viewer {
        Viewer {
            sub: "u".into(),
            org_id: Some(OrganizationId(uuid::Uuid::nil())),
            role: Some(role),
            platform: false,
        }
    }

    #[test]
    fn access_table() {
        assert!(role_allows(&v(Role::Viewer), Action::Read));
        assert!(!role_allows(&v(Role::Member), Action::Record));
        assert!(role_allows(&v(Role::Service), Action::Record));
        assert!(!role_allows(&v(Role::Service), Action::ManageSubscription));
        assert!(role_allows(&v(Role::Owner), Action::ManageSubscription));
        assert!(!role_allows(&v(Role::Owner), Action::Platform));
        // A customer reads nothing of its organization; SERVICE books but does not manage.
        assert!(!role_allows(&v(Role::Customer), Action::Read));
        assert!(!role_allows(&v(Role::Customer), Action::ReadMemberships));
        assert!(!role_allows(&v(Role::Customer), Action::Book));
        assert!(role_allows(&v(Role::Service), Action::Book));
        assert!(!role_allows(&v(Role::Service), Action::ManageMemberships));
        assert!(role_allows(&v(Role::Viewer), Action::ReadMemberships));
        assert!(role_allows(&v(Role::Admin), Action::ManageMemberships));
    }
}

//! Auth's rows as sqlx reads them, and the closed sets of names its text
//! columns hold. A name outside the set is a decoding error (INTERNAL), never
//! quietly another value.

pub use trellis_tenancy::Role;

use trellis_store::stored_names;

stored_names!(
    /// An organization's plan.
    Plan {
        Free = "free",
        Team = "team",
        Enterprise = "enterprise",
    }
);

stored_names!(
    UserStatus {
        Active = "active",
        Invited = "invited",
        Suspended = "suspended",
    }
);

stored_names!(
    /// As stored; a pending invitation past its expiry reads as expired.
    InvitationStatus {
        Pending = "pending",
        Accepted = "accepted",
        Revoked = "revoked",
    }
);

trellis_store::row! {
    #[derive(Clone, Debug)]
    pub struct OrganizationRow {
        pub id: String,
        pub name: String,
        pub slug: String,
        pub plan: Plan as String,
        pub max_users: i64,
        pub max_concurrent_runs: i64,
        pub max_runs_per_month: i64,
        pub created_at: i64,
    }
}

trellis_store::row! {
    #[derive(Clone, Debug)]
    pub struct UserRow {
        pub id: String,
        pub org_id: String,
        pub email: String,
        pub name: String,
        pub password_hash: String,
        pub role: Role as String,
        pub status: UserStatus as String,
        pub created_at: i64,
        pub last_login_at: Option<i64>,
    }
}

trellis_store::row! {
    #[derive(Clone, Debug)]
    pub struct InvitationRow {
        pub id: String,
        pub org_id: String,
        pub email: String,
        pub role: Role as String,
        pub status: InvitationStatus as String,
        pub invited_by: String,
        pub created_at: i64,
        pub expires_at: i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_and_unknown_ones_are_errors() {
        for plan in [Plan::Free, Plan::Team, Plan::Enterprise] {
            assert_eq!(Plan::try_from(plan.as_str().to_owned()).unwrap(), plan);
        }
        for status in [
            UserStatus::Active,
            UserStatus::Invited,
            UserStatus::Suspended,
        ] {
            assert_eq!(
                UserStatus::try_from(status.as_str().to_owned()).unwrap(),
                status
            );
        }
        let error = Plan::try_from("platinum".to_owned()).unwrap_err();
        assert_eq!(error.to_string(), r#"unknown Plan "platinum""#);
        assert!(InvitationStatus::try_from("Pending".to_owned()).is_err());
    }
}

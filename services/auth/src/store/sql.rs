//! Auth's longer SQL statements, kept as `.sql` files (as quickwit's
//! metastore does) so they read as SQL and the Rust around them stays within
//! rustfmt's reach. One text serves SQLite and PostgreSQL alike.

macro_rules! queries {
    ($($name:ident = $file:literal;)+) => {
        $(pub(super) const $name: &str = include_str!(concat!("queries/", $file));)+
    };
}

queries! {
    INSERT_ORGANIZATION = "insert_organization.sql";
    INSERT_USER = "insert_user.sql";
    INSERT_REFRESH_TOKEN = "insert_refresh_token.sql";
    REFRESH_TOKEN_OWNER = "refresh_token_owner.sql";
    RENAME_ORGANIZATION = "rename_organization.sql";
    COUNT_OTHER_ACTIVE_ADMINS = "count_other_active_admins.sql";
    COUNT_PENDING_INVITATIONS_FOR_EMAIL = "count_pending_invitations_for_email.sql";
    SEATS = "seats.sql";
    INSERT_INVITATION = "insert_invitation.sql";
    ORGANIZATION = "organization.sql";
    PENDING_INVITATION_BY_TOKEN = "pending_invitation_by_token.sql";
    CLAIM_INVITATION = "claim_invitation.sql";
}

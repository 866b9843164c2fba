//! OrganizationService: two organizations × admin/developer/viewer × every
//! RPC, plus the admin flows, on SQLite and (when configured) PostgreSQL.

mod common;

use common::*;
use tonic::Code;
use tonic::transport::Channel;
use trellis::auth::v1 as pb;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::organization_service_client::OrganizationServiceClient;
use trellis_cli::ServiceName;

const PASSWORD: &str = "Correct-Horse-9";

struct Member {
    token: String,
    user_id: String,
    email: String,
}

struct Org {
    admin: Member,
    developer: Member,
    viewer: Member,
    pending_invitation: String,
}

/// Invites `email` with `role` and accepts; the invitation is single use.
async fn join(
    orgs: &mut OrganizationServiceClient<Channel>,
    admin_token: &str,
    role: pb::Role,
    email: &str,
) -> Member {
    let invitation = orgs
        .invite_user(authed(
            pb::InviteUserRequest {
                email: email.to_owned(),
                role: role as i32,
            },
            admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(invitation.status, pb::InvitationStatus::Pending as i32);
    let accept = || pb::AcceptInvitationRequest {
        token: invitation.token.clone(),
        name: "Member".into(),
        password: PASSWORD.into(),
    };
    let joined = orgs.accept_invitation(accept()).await.unwrap().into_inner();
    assert_eq!(
        orgs.accept_invitation(accept()).await.unwrap_err().code(),
        Code::NotFound,
        "single use"
    );
    let user = joined.user.unwrap();
    assert_eq!(user.role, role as i32);
    Member {
        token: joined.access_token,
        user_id: user.user_id,
        email: email.to_owned(),
    }
}

async fn build_org(
    auth: &mut AuthServiceClient<Channel>,
    orgs: &mut OrganizationServiceClient<Channel>,
    label: &str,
) -> Org {
    let org_name = label;
    let label = label.to_lowercase();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("admin.{label}.{unique}@example.com");
    let signed_up = auth
        .sign_up(pb::SignUpRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            name: "Admin".into(),
            organization_name: org_name.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let admin = Member {
        user_id: signed_up.user.unwrap().user_id,
        token: signed_up.access_token,
        email,
    };
    let developer = join(
        orgs,
        &admin.token,
        pb::Role::Developer,
        &format!("dev.{label}.{unique}@example.com"),
    )
    .await;
    // A third seat is taken by a pending invitation, then freed below.
    let pending = orgs
        .invite_user(authed(
            pb::InviteUserRequest {
                email: format!("pending.{label}.{unique}@example.com"),
                role: pb::Role::Viewer as i32,
            },
            &admin.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let full = orgs
        .invite_user(authed(
            pb::InviteUserRequest {
                email: format!("late.{label}.{unique}@example.com"),
                role: pb::Role::Viewer as i32,
            },
            &admin.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        full.code(),
        Code::ResourceExhausted,
        "free plan: 3 seats, pending invitations count"
    );
    orgs.revoke_invitation(authed(
        pb::RevokeInvitationRequest {
            invitation_id: pending.invitation_id.clone(),
        },
        &admin.token,
    ))
    .await
    .unwrap();
    let viewer = join(
        orgs,
        &admin.token,
        pb::Role::Viewer,
        &format!("viewer.{label}.{unique}@example.com"),
    )
    .await;
    Org {
        admin,
        developer,
        viewer,
        pending_invitation: pending.invitation_id,
    }
}

/// Two organizations, Alpha and Beta, each with an admin, a developer and
/// a viewer (every seat of the free plan taken, one revoked invitation),
/// served by one Auth server.
struct TwoOrgs {
    running: trellis_cli::Running,
    data_dir: std::path::PathBuf,
    auth: AuthServiceClient<Channel>,
    orgs: OrganizationServiceClient<Channel>,
    a: Org,
    b: Org,
}

impl TwoOrgs {
    async fn start(extra: &[&str]) -> TwoOrgs {
        let data_dir = temp_dir("orgs");
        let running = trellis_cli::start(
            &[ServiceName::Auth, ServiceName::Session],
            &up_args(&data_dir, extra),
        )
        .await
        .unwrap();
        let channel = channel(running.address(ServiceName::Auth).unwrap()).await;
        let mut auth = AuthServiceClient::new(channel.clone());
        let mut orgs = OrganizationServiceClient::new(channel);
        let a = build_org(&mut auth, &mut orgs, "Alpha").await;
        let b = build_org(&mut auth, &mut orgs, "Beta").await;
        TwoOrgs {
            running,
            data_dir,
            auth,
            orgs,
            a,
            b,
        }
    }

    async fn stop(self) {
        self.running.shutdown().await.unwrap();
        std::fs::remove_dir_all(self.data_dir).unwrap();
    }
}

/// Any role reads its own organization and members, never another's; the
/// admin RPCs answer PERMISSION_DENIED to developers and viewers.
async fn every_role_reads_its_organization_and_only_admins_manage_it(extra: &[&str]) {
    let mut fx = TwoOrgs::start(extra).await;
    let orgs = &mut fx.orgs;
    let a = &fx.a;
    for (role, member) in [
        ("admin", &a.admin),
        ("developer", &a.developer),
        ("viewer", &a.viewer),
    ] {
        let is_admin = role == "admin";
        let t = &member.token;
        // Any role reads its own organization and members, never another's.
        let org = orgs
            .get_organization(authed(pb::GetOrganizationRequest {}, t))
            .await
            .unwrap()
            .into_inner()
            .organization
            .unwrap();
        assert_eq!(org.name, "Alpha");
        let users = orgs
            .list_users(authed(pb::ListUsersRequest::default(), t))
            .await
            .unwrap()
            .into_inner()
            .users;
        let mut emails: Vec<_> = users.iter().map(|u| u.email.clone()).collect();
        emails.sort();
        let mut expected = vec![
            a.admin.email.clone(),
            a.developer.email.clone(),
            a.viewer.email.clone(),
        ];
        expected.sort();
        assert_eq!(
            emails, expected,
            "{role} sees exactly its organization's members"
        );

        let expect_admin_only = |result: Result<(), tonic::Status>, what: &str| {
            if is_admin {
                assert!(result.is_ok(), "{role} {what}: {result:?}");
            } else {
                assert_eq!(
                    result.unwrap_err().code(),
                    Code::PermissionDenied,
                    "{role} {what}"
                );
            }
        };
        expect_admin_only(
            orgs.update_organization(authed(
                pb::UpdateOrganizationRequest {
                    name: "Alpha".into(),
                },
                t,
            ))
            .await
            .map(drop),
            "UpdateOrganization",
        );
        expect_admin_only(
            orgs.update_user_role(authed(
                pb::UpdateUserRoleRequest {
                    user_id: a.viewer.user_id.clone(),
                    role: pb::Role::Viewer as i32,
                },
                t,
            ))
            .await
            .map(drop),
            "UpdateUserRole",
        );
        expect_admin_only(
            orgs.list_invitations(authed(pb::ListInvitationsRequest::default(), t))
                .await
                .map(drop),
            "ListInvitations",
        );
        if !is_admin {
            let denied = [
                orgs.suspend_user(authed(
                    pb::SuspendUserRequest {
                        user_id: a.viewer.user_id.clone(),
                    },
                    t,
                ))
                .await
                .map(drop),
                orgs.reactivate_user(authed(
                    pb::ReactivateUserRequest {
                        user_id: a.viewer.user_id.clone(),
                    },
                    t,
                ))
                .await
                .map(drop),
                orgs.remove_user(authed(
                    pb::RemoveUserRequest {
                        user_id: a.viewer.user_id.clone(),
                    },
                    t,
                ))
                .await
                .map(drop),
                orgs.invite_user(authed(
                    pb::InviteUserRequest {
                        email: "x@example.com".into(),
                        role: pb::Role::Viewer as i32,
                    },
                    t,
                ))
                .await
                .map(drop),
                orgs.revoke_invitation(authed(
                    pb::RevokeInvitationRequest {
                        invitation_id: a.pending_invitation.clone(),
                    },
                    t,
                ))
                .await
                .map(drop),
            ];
            for (index, result) in denied.into_iter().enumerate() {
                assert_eq!(
                    result.unwrap_err().code(),
                    Code::PermissionDenied,
                    "{role} admin RPC #{index}"
                );
            }
        }
    }

    fx.stop().await;
}

backend_suite!(
    every_role_reads_its_organization_and_only_admins_manage_it,
    "OrganizationService": sqlite, postgres
);

/// Another organization's users and invitations are NOT_FOUND with the
/// message an unknown id gets, and nothing of it changes.
async fn another_organizations_ids_answer_as_unknown_ones(extra: &[&str]) {
    let mut fx = TwoOrgs::start(extra).await;
    let orgs = &mut fx.orgs;
    let a = &fx.a;
    let b = &fx.b;
    let t = &a.admin.token;
    // Another organization's ids are indistinguishable from unknown ones.
    let unknown = uuid::Uuid::new_v4().to_string();
    // Each would be visible had it worked: a promotion, a suspension, a removal.
    for target in [&b.viewer.user_id, &unknown] {
        let answers = [
            orgs.update_user_role(authed(
                pb::UpdateUserRoleRequest {
                    user_id: target.clone(),
                    role: pb::Role::Admin as i32,
                },
                t,
            ))
            .await
            .unwrap_err(),
            orgs.suspend_user(authed(
                pb::SuspendUserRequest {
                    user_id: target.clone(),
                },
                t,
            ))
            .await
            .unwrap_err(),
            orgs.reactivate_user(authed(
                pb::ReactivateUserRequest {
                    user_id: target.clone(),
                },
                t,
            ))
            .await
            .unwrap_err(),
            orgs.remove_user(authed(
                pb::RemoveUserRequest {
                    user_id: target.clone(),
                },
                t,
            ))
            .await
            .unwrap_err(),
        ];
        for answer in answers {
            assert_eq!(
                (answer.code(), answer.message().to_owned()),
                (Code::NotFound, format!("user not found: {target}"))
            );
        }
    }
    for target in [&b.pending_invitation, &unknown] {
        let answer = orgs
            .revoke_invitation(authed(
                pb::RevokeInvitationRequest {
                    invitation_id: target.clone(),
                },
                t,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (answer.code(), answer.message().to_owned()),
            (Code::NotFound, format!("invitation not found: {target}"))
        );
    }
    // Beta is untouched: all three members, each active in its own role.
    let beta_org = orgs
        .get_organization(authed(pb::GetOrganizationRequest {}, &b.admin.token))
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    let mut beta: Vec<(String, i32, i32, String)> = orgs
        .list_users(authed(pb::ListUsersRequest::default(), &b.admin.token))
        .await
        .unwrap()
        .into_inner()
        .users
        .into_iter()
        .map(|u| (u.user_id, u.role, u.status, u.organization_id))
        .collect();
    beta.sort();
    let active = pb::UserStatus::Active as i32;
    let mut expected = vec![
        (
            b.admin.user_id.clone(),
            pb::Role::Admin as i32,
            active,
            beta_org.organization_id.clone(),
        ),
        (
            b.developer.user_id.clone(),
            pb::Role::Developer as i32,
            active,
            beta_org.organization_id.clone(),
        ),
        (
            b.viewer.user_id.clone(),
            pb::Role::Viewer as i32,
            active,
            beta_org.organization_id.clone(),
        ),
    ];
    expected.sort();
    assert_eq!(beta, expected);
    assert_eq!(beta_org.name, "Beta");

    fx.stop().await;
}

backend_suite!(
    another_organizations_ids_answer_as_unknown_ones,
    "OrganizationService": sqlite, postgres
);

/// An organization always keeps an active admin.
async fn the_last_active_admin_cannot_step_down(extra: &[&str]) {
    let mut fx = TwoOrgs::start(extra).await;
    let orgs = &mut fx.orgs;
    let a = &fx.a;
    let t = &a.admin.token;
    // The last active admin cannot demote, suspend or remove themself.
    for answer in [
        orgs.update_user_role(authed(
            pb::UpdateUserRoleRequest {
                user_id: a.admin.user_id.clone(),
                role: pb::Role::Viewer as i32,
            },
            t,
        ))
        .await
        .unwrap_err(),
        orgs.suspend_user(authed(
            pb::SuspendUserRequest {
                user_id: a.admin.user_id.clone(),
            },
            t,
        ))
        .await
        .unwrap_err(),
        orgs.remove_user(authed(
            pb::RemoveUserRequest {
                user_id: a.admin.user_id.clone(),
            },
            t,
        ))
        .await
        .unwrap_err(),
    ] {
        assert_eq!(answer.code(), Code::FailedPrecondition);
    }

    fx.stop().await;
}

backend_suite!(the_last_active_admin_cannot_step_down, "OrganizationService": sqlite, postgres);

/// A suspended user is logged out everywhere and refused at login, with its
/// own answer; reactivation lets them back in.
async fn suspension_ends_sessions_and_blocks_login_until_reactivated(extra: &[&str]) {
    let mut fx = TwoOrgs::start(extra).await;
    let auth = &mut fx.auth;
    let orgs = &mut fx.orgs;
    let a = &fx.a;
    let t = &a.admin.token;
    // Suspension ends sessions and blocks login; the first two failures
    // below answer alike, suspension differently.
    orgs.suspend_user(authed(
        pb::SuspendUserRequest {
            user_id: a.viewer.user_id.clone(),
        },
        t,
    ))
    .await
    .unwrap();
    let ended = auth
        .who_am_i(authed(pb::WhoAmIRequest {}, &a.viewer.token))
        .await
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated);
    // The session itself ended, as every other server's check sees it.
    let checked = auth
        .check_session(authed(pb::CheckSessionRequest {}, &a.viewer.token))
        .await
        .unwrap()
        .into_inner();
    assert!(!checked.live, "suspension ends the user's sessions");
    let suspended = auth
        .login(pb::LoginRequest {
            email: a.viewer.email.clone(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (suspended.code(), suspended.message()),
        (Code::PermissionDenied, "user is suspended")
    );
    let again = orgs
        .suspend_user(authed(
            pb::SuspendUserRequest {
                user_id: a.viewer.user_id.clone(),
            },
            t,
        ))
        .await
        .unwrap();
    assert_eq!(
        again.into_inner().user.unwrap().status,
        pb::UserStatus::Suspended as i32
    );
    orgs.reactivate_user(authed(
        pb::ReactivateUserRequest {
            user_id: a.viewer.user_id.clone(),
        },
        t,
    ))
    .await
    .unwrap();
    assert_eq!(
        orgs.reactivate_user(authed(
            pb::ReactivateUserRequest {
                user_id: a.viewer.user_id.clone()
            },
            t
        ))
        .await
        .unwrap_err()
        .code(),
        Code::FailedPrecondition
    );
    auth.login(pb::LoginRequest {
        email: a.viewer.email.clone(),
        password: PASSWORD.into(),
    })
    .await
    .unwrap()
    .into_inner();

    fx.stop().await;
}

backend_suite!(
    suspension_ends_sessions_and_blocks_login_until_reactivated,
    "OrganizationService": sqlite, postgres
);

/// Roles apply at once on Auth, and reach other servers through CheckSession.
async fn a_demoted_admin_loses_admin_rights_at_once(extra: &[&str]) {
    let mut fx = TwoOrgs::start(extra).await;
    let auth = &mut fx.auth;
    let orgs = &mut fx.orgs;
    let a = &fx.a;
    let t = &a.admin.token;
    // A demoted admin loses admin rights at once, even with an old token.
    orgs.update_user_role(authed(
        pb::UpdateUserRoleRequest {
            user_id: a.developer.user_id.clone(),
            role: pb::Role::Admin as i32,
        },
        t,
    ))
    .await
    .unwrap();
    orgs.update_user_role(authed(
        pb::UpdateUserRoleRequest {
            user_id: a.admin.user_id.clone(),
            role: pb::Role::Developer as i32,
        },
        &a.developer.token,
    ))
    .await
    .unwrap();
    let demoted = orgs
        .update_organization(authed(
            pb::UpdateOrganizationRequest {
                name: "Nope".into(),
            },
            t,
        ))
        .await
        .unwrap_err();
    assert_eq!(demoted.code(), Code::PermissionDenied);
    // Other servers learn the role now from CheckSession, not from the token.
    let checked = auth
        .check_session(authed(pb::CheckSessionRequest {}, t))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (checked.live, checked.role),
        (true, pb::Role::Developer as i32)
    );

    // The promoted developer's token, issued for a developer, acts as an
    // admin on every admin RPC, not only the one above.
    orgs.list_invitations(authed(
        pb::ListInvitationsRequest::default(),
        &a.developer.token,
    ))
    .await
    .unwrap();
    fx.stop().await;
}

backend_suite!(a_demoted_admin_loses_admin_rights_at_once, "OrganizationService": sqlite, postgres);

/// A removed user cannot log in or refresh, and its seat can be invited to.
async fn removal_ends_the_users_sessions_and_frees_a_seat(extra: &[&str]) {
    let mut fx = TwoOrgs::start(extra).await;
    let auth = &mut fx.auth;
    let orgs = &mut fx.orgs;
    let a = &fx.a;
    let t = &a.admin.token;
    let back = auth
        .login(pb::LoginRequest {
            email: a.viewer.email.clone(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Removal frees a seat; the removed user can no longer log in.
    orgs.remove_user(authed(
        pb::RemoveUserRequest {
            user_id: a.viewer.user_id.clone(),
        },
        t,
    ))
    .await
    .unwrap();
    let gone = auth
        .login(pb::LoginRequest {
            email: a.viewer.email.clone(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::Unauthenticated);
    let checked = auth
        .check_session(authed(pb::CheckSessionRequest {}, &back.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(!checked.live, "removal ends the user's sessions");
    let refused = auth
        .refresh(pb::RefreshRequest {
            refresh_token: back.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // The seat it held can be taken again.
    orgs.invite_user(authed(
        pb::InviteUserRequest {
            email: format!("next.{}@example.com", uuid::Uuid::new_v4().simple()),
            role: pb::Role::Developer as i32,
        },
        t,
    ))
    .await
    .unwrap();
    fx.stop().await;
}

backend_suite!(
    removal_ends_the_users_sessions_and_frees_a_seat,
    "OrganizationService": sqlite, postgres
);

/// Invitation tokens are shown once; revoked, used and unknown ones answer alike.
async fn invitations_list_newest_first_and_revoked_ones_cannot_be_accepted(extra: &[&str]) {
    let mut fx = TwoOrgs::start(extra).await;
    let orgs = &mut fx.orgs;
    let a = &fx.a;
    let t = &a.admin.token;
    // Every seat is taken: removing the viewer frees one.
    orgs.remove_user(authed(
        pb::RemoveUserRequest {
            user_id: a.viewer.user_id.clone(),
        },
        t,
    ))
    .await
    .unwrap();
    let invited = orgs
        .invite_user(authed(
            pb::InviteUserRequest {
                email: format!("next.{}@example.com", uuid::Uuid::new_v4().simple()),
                role: pb::Role::Developer as i32,
            },
            t,
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let listed = orgs
        .list_invitations(authed(pb::ListInvitationsRequest::default(), t))
        .await
        .unwrap()
        .into_inner()
        .invitations;
    assert_eq!(
        listed[0].invitation_id, invited.invitation_id,
        "newest first"
    );
    assert!(
        listed.iter().all(|i| i.token.is_empty()),
        "tokens are shown once, at invitation"
    );
    assert!(
        listed
            .iter()
            .any(|i| i.status == pb::InvitationStatus::Revoked as i32)
    );
    let revoked = orgs
        .revoke_invitation(authed(
            pb::RevokeInvitationRequest {
                invitation_id: invited.invitation_id.clone(),
            },
            t,
        ))
        .await
        .unwrap();
    assert_eq!(
        revoked.into_inner().invitation.unwrap().status,
        pb::InvitationStatus::Revoked as i32
    );
    let stale = orgs
        .accept_invitation(pb::AcceptInvitationRequest {
            token: invited.token,
            name: "Late".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::NotFound);
    let forged = orgs
        .accept_invitation(pb::AcceptInvitationRequest {
            token: "not-a-token".into(),
            name: "Forger".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (forged.code(), forged.message()),
        (stale.code(), stale.message()),
        "unknown and used-up tokens answer alike"
    );

    fx.stop().await;
}

backend_suite!(
    invitations_list_newest_first_and_revoked_ones_cannot_be_accepted,
    "OrganizationService": sqlite, postgres
);

/// Keyset paging walks every member once; page sizes are bounded.
async fn members_page_one_at_a_time(extra: &[&str]) {
    let mut fx = TwoOrgs::start(extra).await;
    let orgs = &mut fx.orgs;
    let a = &fx.a;
    let t = &a.admin.token;
    // Paging: one at a time walks all members, then stops.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = orgs
            .list_users(authed(
                pb::ListUsersRequest {
                    page_size: 1,
                    page_token: page_token.clone(),
                },
                t,
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.users.into_iter().map(|u| u.user_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    seen.sort();
    let mut members = vec![
        a.admin.user_id.clone(),
        a.developer.user_id.clone(),
        a.viewer.user_id.clone(),
    ];
    members.sort();
    assert_eq!(seen, members, "every member once, nobody else's");
    let bad = orgs
        .list_users(authed(
            pb::ListUsersRequest {
                page_size: 501,
                page_token: String::new(),
            },
            t,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    fx.stop().await;
}

backend_suite!(members_page_one_at_a_time, "OrganizationService": sqlite, postgres);

//! The gRPC face of [`AuthApi`]: each method unpacks the request (caller,
//! tenant, message), calls the handler and converts its result. Nothing
//! else happens here; errors become statuses in [`grpc_result`] alone.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis::auth::v1 as pb;
use trellis::auth::v1::auth_service_server::AuthService;
use trellis::auth::v1::organization_service_server::OrganizationService;
use trellis_runtime::{grpc_result, status_of};
use trellis_tenancy::{Principal, TenantContext};

use crate::api::AuthApi;
use crate::audit::Caller;
use crate::error::AuthServiceError;

/// Serves both Auth services from one [`AuthApi`].
#[derive(Clone)]
pub struct GrpcAdapter(pub Arc<AuthApi>);

/// The caller the tenancy layer verified; its absence means this method
/// was wired as public by mistake.
fn tenant<T>(request: &Request<T>) -> Result<TenantContext, Status> {
    TenantContext::from_request(request)
        .cloned()
        .map_err(|_| status_of(AuthServiceError::MissingToken))
}

/// The pieces a handler takes: who calls, as whom, and the message.
fn unpack<T>(request: Request<T>) -> Result<(Caller, TenantContext, T), Status> {
    let tenant = tenant(&request)?;
    Ok((Caller::of(&request), tenant, request.into_inner()))
}

#[tonic::async_trait]
impl AuthService for GrpcAdapter {
    async fn sign_up(
        &self,
        request: Request<pb::SignUpRequest>,
    ) -> Result<Response<pb::SignUpResponse>, Status> {
        let caller = Caller::of(&request);
        let issued = self.0.sign_up(&caller, request.into_inner()).await;
        grpc_result(issued.map(Into::into))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let caller = Caller::of(&request);
        let issued = self.0.login(&caller, request.into_inner()).await;
        grpc_result(issued.map(Into::into))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let caller = Caller::of(&request);
        let issued = self.0.refresh(&caller, request.into_inner()).await;
        grpc_result(issued.map(Into::into))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let (caller, tenant, _) = unpack(request)?;
        let ended = self.0.logout(&caller, &tenant).await;
        grpc_result(ended.map(|()| pb::LogoutResponse {}))
    }

    async fn logout_all(
        &self,
        request: Request<pb::LogoutAllRequest>,
    ) -> Result<Response<pb::LogoutAllResponse>, Status> {
        let (caller, tenant, _) = unpack(request)?;
        let revoked = self.0.logout_all(&caller, &tenant).await;
        grpc_result(revoked.map(|revoked| pb::LogoutAllResponse {
            revoked_sessions: revoked as i32,
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let tenant = tenant(&request)?;
        grpc_result(self.0.who_am_i(&tenant).await)
    }

    async fn check_session(
        &self,
        request: Request<pb::CheckSessionRequest>,
    ) -> Result<Response<pb::CheckSessionResponse>, Status> {
        // Any caller: the layer put its Principal there.
        let principal = Principal::from_request(&request)
            .cloned()
            .map_err(|_| status_of(AuthServiceError::MissingToken))?;
        grpc_result(self.0.check_principal(&principal).await)
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::IssueServiceTokenResponse>, Status> {
        let caller = Caller::of(&request);
        grpc_result(
            self.0
                .issue_service_token(&caller, request.into_inner())
                .await,
        )
    }

    async fn get_jwks(
        &self,
        _: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(self.0.jwks()))
    }
}

#[tonic::async_trait]
impl OrganizationService for GrpcAdapter {
    async fn get_organization(
        &self,
        request: Request<pb::GetOrganizationRequest>,
    ) -> Result<Response<pb::GetOrganizationResponse>, Status> {
        let tenant = tenant(&request)?;
        let organization = self.0.get_organization(&tenant).await;
        grpc_result(organization.map(|org| pb::GetOrganizationResponse {
            organization: Some(org),
        }))
    }

    async fn update_organization(
        &self,
        request: Request<pb::UpdateOrganizationRequest>,
    ) -> Result<Response<pb::UpdateOrganizationResponse>, Status> {
        let (caller, tenant, input) = unpack(request)?;
        let organization = self.0.update_organization(&caller, &tenant, input).await;
        grpc_result(organization.map(|org| pb::UpdateOrganizationResponse {
            organization: Some(org),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let (_, tenant, input) = unpack(request)?;
        grpc_result(self.0.list_users(&tenant, input).await)
    }

    async fn update_user_role(
        &self,
        request: Request<pb::UpdateUserRoleRequest>,
    ) -> Result<Response<pb::UpdateUserRoleResponse>, Status> {
        let (caller, tenant, input) = unpack(request)?;
        let user = self.0.update_user_role(&caller, &tenant, input).await;
        grpc_result(user.map(|user| pb::UpdateUserRoleResponse { user: Some(user) }))
    }

    async fn suspend_user(
        &self,
        request: Request<pb::SuspendUserRequest>,
    ) -> Result<Response<pb::SuspendUserResponse>, Status> {
        let (caller, tenant, input) = unpack(request)?;
        let user = self.0.suspend_user(&caller, &tenant, input).await;
        grpc_result(user.map(|user| pb::SuspendUserResponse { user: Some(user) }))
    }

    async fn reactivate_user(
        &self,
        request: Request<pb::ReactivateUserRequest>,
    ) -> Result<Response<pb::ReactivateUserResponse>, Status> {
        let (caller, tenant, input) = unpack(request)?;
        let user = self.0.reactivate_user(&caller, &tenant, input).await;
        grpc_result(user.map(|user| pb::ReactivateUserResponse { user: Some(user) }))
    }

    async fn remove_user(
        &self,
        request: Request<pb::RemoveUserRequest>,
    ) -> Result<Response<pb::RemoveUserResponse>, Status> {
        let (caller, tenant, input) = unpack(request)?;
        let removed = self.0.remove_user(&caller, &tenant, input).await;
        grpc_result(removed.map(|()| pb::RemoveUserResponse {}))
    }

    async fn invite_user(
        &self,
        request: Request<pb::InviteUserRequest>,
    ) -> Result<Response<pb::InviteUserResponse>, Status> {
        let (caller, tenant, input) = unpack(request)?;
        let invitation = self.0.invite_user(&caller, &tenant, input).await;
        grpc_result(invitation.map(|invitation| pb::InviteUserResponse {
            invitation: Some(invitation),
        }))
    }

    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        let (_, tenant, input) = unpack(request)?;
        grpc_result(self.0.list_invitations(&tenant, input).await)
    }

    async fn revoke_invitation(
        &self,
        request: Request<pb::RevokeInvitationRequest>,
    ) -> Result<Response<pb::RevokeInvitationResponse>, Status> {
        let (caller, tenant, input) = unpack(request)?;
        let invitation = self.0.revoke_invitation(&caller, &tenant, input).await;
        grpc_result(invitation.map(|invitation| pb::RevokeInvitationResponse {
            invitation: Some(invitation),
        }))
    }

    async fn get_plan_limits(
        &self,
        request: Request<pb::GetPlanLimitsRequest>,
    ) -> Result<Response<pb::GetPlanLimitsResponse>, Status> {
        let limits = self
            .0
            .plan_limits(&request.into_inner().organization_id)
            .await;
        grpc_result(limits.map(|limits| pb::GetPlanLimitsResponse {
            limits: Some(limits),
        }))
    }

    async fn accept_invitation(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::AcceptInvitationResponse>, Status> {
        let caller = Caller::of(&request);
        let issued = self
            .0
            .accept_invitation(&caller, request.into_inner())
            .await;
        grpc_result(issued.map(Into::into))
    }
}

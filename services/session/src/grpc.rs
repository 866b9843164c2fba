//! The gRPC face of [`SessionApi`]: unpack (caller, message), call the
//! handler, convert. Errors become statuses in `grpc_result` alone.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis::session::v1 as pb;
use trellis::session::v1::login_session_service_server::LoginSessionService;
use trellis::session::v1::session_service_server::SessionService;
use trellis_runtime::{grpc_result, status_of};
use trellis_tenancy::{CallContext, TenantContext};

use crate::api::{Client, SessionApi};
use crate::error::SessionServiceError;

#[derive(Clone)]
pub struct GrpcAdapter(pub Arc<SessionApi>);

/// The user the tenancy layer verified, and the message.
fn unpack<T>(request: Request<T>) -> Result<(TenantContext, T), Status> {
    let tenant = TenantContext::from_request(&request)
        .cloned()
        .map_err(|_| status_of(SessionServiceError::MissingCaller))?;
    Ok((tenant, request.into_inner()))
}

#[tonic::async_trait]
impl SessionService for GrpcAdapter {
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let client = Client {
            user_agent: CallContext::user_agent_of(&request),
            address: CallContext::from_request(&request)
                .client_address()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        };
        let (tenant, message) = unpack(request)?;
        let created = self.0.create(&tenant, client, message).await;
        grpc_result(created.map(|session| pb::CreateSessionResponse {
            session: Some(session),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let (tenant, message) = unpack(request)?;
        let found = self.0.get(&tenant, &message.session_id).await;
        grpc_result(found.map(|session| pb::GetSessionResponse {
            session: Some(session),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let (tenant, message) = unpack(request)?;
        grpc_result(self.0.list(&tenant, message).await)
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        let (tenant, message) = unpack(request)?;
        let deleted = self.0.delete(&tenant, &message.session_id).await;
        grpc_result(deleted.map(|()| pb::DeleteSessionResponse {}))
    }

    async fn delete_other_sessions(
        &self,
        request: Request<pb::DeleteOtherSessionsRequest>,
    ) -> Result<Response<pb::DeleteOtherSessionsResponse>, Status> {
        let (tenant, _) = unpack(request)?;
        let deleted = self.0.delete_others(&tenant).await;
        grpc_result(deleted.map(|deleted_count| pb::DeleteOtherSessionsResponse { deleted_count }))
    }

    async fn get_session_stats(
        &self,
        request: Request<pb::GetSessionStatsRequest>,
    ) -> Result<Response<pb::GetSessionStatsResponse>, Status> {
        let (tenant, _) = unpack(request)?;
        grpc_result(self.0.stats(&tenant).await)
    }

    async fn check_sessions(
        &self,
        request: Request<pb::CheckSessionsRequest>,
    ) -> Result<Response<pb::CheckSessionsResponse>, Status> {
        grpc_result(self.0.check_many(request.into_inner()).await)
    }
}

/// Internal: the tenancy layer admits service tokens only; each request
/// names the organization it acts for.
#[tonic::async_trait]
impl LoginSessionService for GrpcAdapter {
    async fn open_login_session(
        &self,
        request: Request<pb::OpenLoginSessionRequest>,
    ) -> Result<Response<pb::OpenLoginSessionResponse>, Status> {
        let opened = self.0.open_login(request.into_inner()).await;
        grpc_result(opened.map(|csrf_token| pb::OpenLoginSessionResponse { csrf_token }))
    }

    async fn check_login_session(
        &self,
        request: Request<pb::CheckLoginSessionRequest>,
    ) -> Result<Response<pb::CheckLoginSessionResponse>, Status> {
        let live = self.0.check_login(request.into_inner()).await;
        grpc_result(live.map(|live| pb::CheckLoginSessionResponse { live }))
    }

    async fn touch_login_session(
        &self,
        request: Request<pb::TouchLoginSessionRequest>,
    ) -> Result<Response<pb::TouchLoginSessionResponse>, Status> {
        let touched = self.0.touch_login(request.into_inner()).await;
        grpc_result(touched.map(|csrf| pb::TouchLoginSessionResponse {
            live: csrf.is_some(),
            csrf_token: csrf.unwrap_or_default(),
        }))
    }

    async fn end_login_session(
        &self,
        request: Request<pb::EndLoginSessionRequest>,
    ) -> Result<Response<pb::EndLoginSessionResponse>, Status> {
        let ended = self.0.end_login(request.into_inner()).await;
        grpc_result(ended.map(|ended| pb::EndLoginSessionResponse { ended }))
    }

    async fn end_user_login_sessions(
        &self,
        request: Request<pb::EndUserLoginSessionsRequest>,
    ) -> Result<Response<pb::EndUserLoginSessionsResponse>, Status> {
        let ended = self.0.end_user_logins(request.into_inner()).await;
        grpc_result(ended.map(|ended| pb::EndUserLoginSessionsResponse { ended }))
    }
}

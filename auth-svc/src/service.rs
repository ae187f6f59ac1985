//! The `AuthService` handlers: thin, because the auth layer did the work.

use casebook::{
    auth::{Principal, TokenVerifier},
    db::users::UserDirectory,
    pb::casebook::auth::v1::{
        User, VerifyTokenRequest, VerifyTokenResponse, WhoAmIRequest,
        auth_service_server::AuthService,
    },
    rpc_error,
};
use tonic::{Code, Request, Response, Status};

use crate::convert;

/// `casebook.auth.v1.AuthService`.
pub struct AuthApi {
    verifier: TokenVerifier,
    users: UserDirectory,
}

impl AuthApi {
    /// Handlers verifying with `verifier` and reading users from `users`.
    pub fn new(verifier: TokenVerifier, users: UserDirectory) -> Self {
        Self { verifier, users }
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn verify_token(
        &self,
        request: Request<VerifyTokenRequest>,
    ) -> Result<Response<VerifyTokenResponse>, Status> {
        let token = request.get_ref().token.trim();
        if token.is_empty() {
            return Err(rpc_error::invalid_field(
                "token",
                "required: the JWT to verify",
            ));
        }
        let principal = self.verifier.verify(token).await?;
        Ok(Response::new(VerifyTokenResponse {
            principal: Some(convert::principal(&principal)),
        }))
    }

    async fn who_am_i(&self, request: Request<WhoAmIRequest>) -> Result<Response<User>, Status> {
        let principal = Principal::of(&request)?;
        let user = self.users.find(&principal.user_id).await.map_err(|error| {
            tracing::error!(%error, "user lookup failed");
            rpc_error::database(&error, "the user directory")
        })?;
        match user {
            Some(user) => Ok(Response::new(convert::user(user))),
            None => Err(rpc_error::with_reason(
                Code::NotFound,
                "USER_NOT_FOUND",
                format!("user {} no longer exists; sign in again", principal.user_id),
            )),
        }
    }
}

//! The one place a service's error becomes a gRPC status, in the spirit of
//! quickwit's `ServiceError::error_code()` and `convert_to_grpc_result`.
//!
//! Each service keeps one error enum whose variants say what went wrong in
//! its domain (`EmailTaken`, `LastAdmin`); implementing [`ServiceError`]
//! says what a client sees. Handlers return the enum and never build a
//! `Status`; the gRPC adapter ends with [`grpc_result`].

use tonic::{Code, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use trellis_store::StoreError;

/// What the gRPC boundary needs to know about a service's error.
pub trait ServiceError: std::error::Error {
    /// The `ErrorInfo` domain of this service's reasons, e.g. `auth.trellis`.
    const DOMAIN: &'static str;

    fn code(&self) -> Code;

    /// A stable UPPER_SNAKE_CASE name clients may branch on (`ErrorInfo`).
    fn reason(&self) -> &'static str;

    /// What the client reads. `INTERNAL` errors never show theirs.
    fn message(&self) -> String {
        self.to_string()
    }

    /// `BadRequest`, `RetryInfo` and the like; `ErrorInfo` is added for you.
    fn details(&self) -> ErrorDetails {
        ErrorDetails::new()
    }
}

/// The status a client receives for `error`. Internal errors are logged in
/// full and answered with no detail; unavailable ones are logged as warnings.
pub fn status_of<E: ServiceError>(error: E) -> Status {
    let code = error.code();
    match code {
        Code::Internal | Code::Unknown | Code::DataLoss => {
            tracing::error!(domain = E::DOMAIN, %error, "internal error");
            return Status::internal("internal error");
        }
        Code::Unavailable => tracing::warn!(domain = E::DOMAIN, %error, "unavailable"),
        _ => {}
    }
    let mut details = error.details();
    details.set_error_info(error.reason(), E::DOMAIN, std::collections::HashMap::new());
    Status::with_error_details(code, error.message(), details)
}

/// A handler's result as tonic wants it.
pub fn grpc_result<T, E: ServiceError>(result: Result<T, E>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(status_of)
}

/// Storage failures: connection trouble is `UNAVAILABLE` (the caller may
/// retry); anything else is `INTERNAL` with details kept in the log. Service
/// enums wrapping a `StoreError` delegate to this.
impl ServiceError for StoreError {
    const DOMAIN: &'static str = "store.trellis";

    fn code(&self) -> Code {
        if self.is_unavailable() {
            Code::Unavailable
        } else {
            Code::Internal
        }
    }

    fn reason(&self) -> &'static str {
        if self.is_unavailable() {
            "STORAGE_UNAVAILABLE"
        } else {
            "INTERNAL"
        }
    }

    fn message(&self) -> String {
        if self.is_unavailable() {
            "storage temporarily unavailable, retry later".into()
        } else {
            "internal error".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[derive(Debug, thiserror::Error)]
    enum ShopError {
        #[error("basket is empty")]
        EmptyBasket,
        #[error("secret connection string leaked")]
        Broken,
        #[error(transparent)]
        Store(#[from] StoreError),
    }

    impl ServiceError for ShopError {
        const DOMAIN: &'static str = "shop.test";

        fn code(&self) -> Code {
            match self {
                ShopError::EmptyBasket => Code::FailedPrecondition,
                ShopError::Broken => Code::Internal,
                ShopError::Store(error) => error.code(),
            }
        }

        fn reason(&self) -> &'static str {
            match self {
                ShopError::EmptyBasket => "EMPTY_BASKET",
                ShopError::Broken => "INTERNAL",
                ShopError::Store(error) => error.reason(),
            }
        }

        fn message(&self) -> String {
            match self {
                ShopError::Store(error) => error.message(),
                other => other.to_string(),
            }
        }
    }

    #[test]
    fn domain_errors_carry_code_message_and_error_info() {
        let status = status_of(ShopError::EmptyBasket);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "basket is empty");
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "EMPTY_BASKET");
        assert_eq!(info.domain, "shop.test");
    }

    #[test]
    fn internal_errors_say_nothing_of_their_cause() {
        let status = status_of(ShopError::Broken);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        assert!(status.details().is_empty());
    }

    #[test]
    fn unreachable_storage_is_unavailable_without_its_details() {
        let status = status_of(ShopError::Store(StoreError::Sqlx(sqlx_pool_timeout())));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "storage temporarily unavailable, retry later"
        );
        let status = grpc_result::<(), _>(Err(ShopError::Store(StoreError::UnsupportedUrl(
            "mysql://secret@db".into(),
        ))))
        .unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    fn sqlx_pool_timeout() -> sqlx::Error {
        sqlx::Error::PoolTimedOut
    }
}

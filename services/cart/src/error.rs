//! Everything the Cart server (catalog and carts) can answer besides
//! success, and the one place those answers become status codes.

use tonic::Code;
use tonic_types::{ErrorDetails, FieldViolation};
use trellis_runtime::ServiceError;
use trellis_store::StoreError;
use uuid::Uuid;

use crate::model::MAX_LINES;

pub type Result<T, E = CartServiceError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CartServiceError {
    #[error("{}: {}", .0.field, .0.description)]
    InvalidField(FieldViolation),
    /// Ended, expired, another user's or another organization's.
    #[error("session not found: {0}")]
    SessionNotFound(Uuid),
    /// Unknown, another organization's, or (for carts and orders) inactive.
    #[error("product not found: {0}")]
    ProductNotFound(Uuid),
    #[error("item not found: {0}")]
    ItemNotFound(Uuid),
    #[error("a product with sku {0:?} exists")]
    SkuTaken(String),
    #[error("requires role admin")]
    AdminRequired,
    #[error("requires role admin or developer")]
    WriteRoleRequired,
    #[error("not enough stock of product {product_id}: {available} available")]
    InsufficientStock { product_id: Uuid, available: i64 },
    #[error("product {0} has unlimited stock")]
    UnlimitedStock(Uuid),
    #[error("stock of product {product_id} would go below zero ({stock} on hand)")]
    StockBelowZero { product_id: Uuid, stock: i64 },
    #[error("the stock reservation of order {0} was released; an order reserves once")]
    ReservationReleased(Uuid),
    #[error("a cart holds at most {MAX_LINES} lines")]
    TooManyLines,
    /// Optimistic concurrency: someone changed the cart since it was read.
    #[error("cart changed: version is {current}, expected {expected}")]
    VersionMismatch { expected: i64, current: i64 },
    #[error("missing bearer token")]
    MissingCaller,
    /// The Session service could not say whose the session is.
    #[error("sessions temporarily unavailable, retry later")]
    SessionsUnavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl CartServiceError {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        CartServiceError::InvalidField(FieldViolation::new(field, description))
    }
}

impl ServiceError for CartServiceError {
    const DOMAIN: &'static str = "cart.trellis";

    fn code(&self) -> Code {
        use CartServiceError::*;
        match self {
            InvalidField(_) | TooManyLines => Code::InvalidArgument,
            SessionNotFound(_) | ProductNotFound(_) | ItemNotFound(_) => Code::NotFound,
            SkuTaken(_) => Code::AlreadyExists,
            AdminRequired | WriteRoleRequired => Code::PermissionDenied,
            InsufficientStock { .. } | UnlimitedStock(_) | StockBelowZero { .. } => {
                Code::FailedPrecondition
            }
            VersionMismatch { .. } | ReservationReleased(_) => Code::Aborted,
            MissingCaller => Code::Unauthenticated,
            SessionsUnavailable(_) => Code::Unavailable,
            Store(error) => error.code(),
            Internal(_) => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        use CartServiceError::*;
        match self {
            InvalidField(_) => "INVALID_FIELDS",
            TooManyLines => "TOO_MANY_LINES",
            SessionNotFound(_) => "SESSION_NOT_FOUND",
            ProductNotFound(_) => "PRODUCT_NOT_FOUND",
            ItemNotFound(_) => "ITEM_NOT_FOUND",
            SkuTaken(_) => "SKU_TAKEN",
            AdminRequired => "ADMIN_REQUIRED",
            WriteRoleRequired => "WRITE_ROLE_REQUIRED",
            InsufficientStock { .. } => "INSUFFICIENT_STOCK",
            UnlimitedStock(_) => "UNLIMITED_STOCK",
            StockBelowZero { .. } => "STOCK_BELOW_ZERO",
            VersionMismatch { .. } => "VERSION_MISMATCH",
            ReservationReleased(_) => "RESERVATION_RELEASED",
            MissingCaller => "MISSING_TOKEN",
            SessionsUnavailable(_) => "SESSIONS_UNAVAILABLE",
            Store(error) => error.reason(),
            Internal(_) => "INTERNAL",
        }
    }

    fn message(&self) -> String {
        match self {
            CartServiceError::Store(error) => error.message(),
            other => other.to_string(),
        }
    }

    fn details(&self) -> ErrorDetails {
        match self {
            CartServiceError::InvalidField(violation) => {
                ErrorDetails::with_bad_request(vec![violation.clone()])
            }
            _ => ErrorDetails::new(),
        }
    }
}

//! The console's errors, with the same codes as the CLI's exit codes.

use axum::http::StatusCode;
use saga_core::{Error, SignalRefusal};

/// Why a console request was refused; each message says what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsoleError {
    /// Malformed input: an id, a status, an age, a missing reason (CLI exit code 2).
    BadInput(String),
    /// No such saga or item (exit code 3).
    NotFound(String),
    /// Not applicable now: already settled, over a bound, not authorized by the approval
    /// policy (exit code 4).
    Refused(String),
    /// The store could not be reached; safe to retry (exit code 5).
    Unavailable(String),
    /// No credentials, or ones no authorizer accepts.
    Unauthenticated,
    /// Credentials that may not do this: a viewer acting, a forged cross-site request.
    Forbidden(String),
    /// Anything else (exit code 1).
    Internal(String),
}

impl ConsoleError {
    /// The stable code in error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadInput(_) => "bad_input",
            Self::NotFound(_) => "not_found",
            Self::Refused(_) => "refused",
            Self::Unavailable(_) => "store_unavailable",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::Internal(_) => "internal",
        }
    }

    /// The `saga` CLI's exit code for the same failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadInput(_) => 2,
            Self::NotFound(_) => 3,
            Self::Refused(_) | Self::Forbidden(_) | Self::Unauthenticated => 4,
            Self::Unavailable(_) => 5,
            Self::Internal(_) => 1,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadInput(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Refused(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadInput(message)
            | Self::NotFound(message)
            | Self::Refused(message)
            | Self::Unavailable(message)
            | Self::Forbidden(message)
            | Self::Internal(message) => f.write_str(message),
            Self::Unauthenticated => f.write_str(
                "sign in: send `Authorization: Bearer <token>` or log in on the console's login page with a token an operator gave you",
            ),
        }
    }
}

impl std::error::Error for ConsoleError {}

impl From<Error> for ConsoleError {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match &err {
            Error::SagaNotFound(_) | Error::InterventionNotFound(_) => Self::NotFound(message),
            Error::SignalRefused {
                refusal: SignalRefusal::UnknownStartKey(_),
                ..
            } => Self::NotFound(message),
            Error::InterventionSettled(_)
            | Error::InvalidAction(_)
            | Error::Conflict { .. }
            | Error::NotAuthorized { .. }
            | Error::SignalRefused { .. } => Self::Refused(message),
            Error::StoreUnavailable(_) => Self::Unavailable(message),
            Error::Configuration(_) => Self::BadInput(message),
            _ => Self::Internal(message),
        }
    }
}

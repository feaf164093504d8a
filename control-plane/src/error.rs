//! The error of every API call and its one mapping onto gRPC status codes.

use tonic::{Code, Status};

use crate::state::Rejection;

/// Why an API call failed. "The caller asked for something wrong" (the first group) is kept
/// apart from "the cluster cannot answer now" and "this replica is broken".
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as named in the proto (dotted for nested fields).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request names something the cluster does not know.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// What kind of thing: "node", "replica", "model".
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The request would create something that exists.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// What kind of thing.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The request is well-formed but the cluster's state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No leader or no quorum answered within the request budget; the caller may retry.
    /// A write that ends here may or may not have been applied.
    #[error("{message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The leader's address when known, so a client can go there directly.
        leader: Option<String>,
    },
    /// A bug or a storage failure on this replica.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A bad field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The cluster cannot answer now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::Unavailable {
            message: message.into(),
            leader: None,
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::UnknownNode(id) => ApiError::NotFound { kind: "node", id },
            Rejection::UnknownModel(id) => ApiError::NotFound { kind: "model", id },
            Rejection::ModelExists(id) => ApiError::AlreadyExists { kind: "model", id },
            Rejection::Invariant(reason) | Rejection::NotAllowed(reason) => {
                ApiError::FailedPrecondition(reason)
            }
        }
    }
}

/// Metadata key carrying the leader's address on UNAVAILABLE answers.
pub const LEADER_METADATA_KEY: &str = "x-dllm-leader";

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::InvalidArgument { .. } => Status::new(Code::InvalidArgument, message),
            ApiError::NotFound { .. } => Status::new(Code::NotFound, message),
            ApiError::AlreadyExists { .. } => Status::new(Code::AlreadyExists, message),
            ApiError::FailedPrecondition(_) => Status::new(Code::FailedPrecondition, message),
            ApiError::Unavailable { leader, .. } => {
                let mut status = Status::new(Code::Unavailable, message);
                if let Some(value) = leader.and_then(|l| l.parse().ok()) {
                    status.metadata_mut().insert(LEADER_METADATA_KEY, value);
                }
                status
            }
            ApiError::Internal(_) => Status::new(Code::Internal, message),
        }
    }
}

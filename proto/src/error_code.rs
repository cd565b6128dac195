//! The one wire error-code set: how a failed RPC says what went wrong, whether its outcome is
//! definite or unknown, and where the leader is. Codes travel as an `ErrorDetail` in the gRPC
//! status details, next to a human-readable message.

use prost::Message;

use crate::v1::{ErrorCode, ErrorDetail};

impl ErrorCode {
    /// True when a request that failed with this code may nevertheless have taken effect.
    /// Such a commit is retried only with the same transaction id.
    pub fn is_outcome_unknown(self) -> bool {
        matches!(self, ErrorCode::Timeout | ErrorCode::LeaderChanged)
    }

    /// True when the same request may be sent again (to this or another replica).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::LeaderChanged
                | ErrorCode::Storage
        )
    }

    pub fn tonic_code(self) -> tonic::Code {
        match self {
            ErrorCode::NotLeader => tonic::Code::FailedPrecondition,
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::TooLarge => tonic::Code::OutOfRange,
            ErrorCode::Unavailable | ErrorCode::Storage => tonic::Code::Unavailable,
            ErrorCode::Timeout => tonic::Code::DeadlineExceeded,
            ErrorCode::LeaderChanged => tonic::Code::Aborted,
            ErrorCode::Internal | ErrorCode::Unspecified => tonic::Code::Internal,
            ErrorCode::Checksum => tonic::Code::DataLoss,
            ErrorCode::BlockMissing => tonic::Code::NotFound,
        }
    }
}

/// Builds the status a server returns for `code`.
pub fn status(code: ErrorCode, message: impl Into<String>) -> tonic::Status {
    status_with_leader(code, message, 0, String::new())
}

/// Builds a status that also names the leader (for `NotLeader`).
pub fn status_with_leader(
    code: ErrorCode,
    message: impl Into<String>,
    leader_id: u64,
    leader_addr: String,
) -> tonic::Status {
    let detail = ErrorDetail { code: code as i32, leader_id, leader_addr };
    tonic::Status::with_details(code.tonic_code(), message, detail.encode_to_vec().into())
}

/// Reads the error detail of a status. A status that did not come from a CFFS server (a
/// transport failure, a dropped connection) has none: it maps to `Unavailable` when the
/// request surely did not reach a server, and to `Timeout` (unknown outcome) otherwise.
pub fn detail(status: &tonic::Status) -> ErrorDetail {
    if let Ok(detail) = ErrorDetail::decode(status.details()) {
        if detail.code != ErrorCode::Unspecified as i32 {
            return detail;
        }
    }
    let code = match status.code() {
        tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => ErrorCode::TooLarge,
        // A connection that could not be made: nothing was sent.
        tonic::Code::Unavailable if status.message().contains("connect") => ErrorCode::Unavailable,
        tonic::Code::Internal | tonic::Code::Unimplemented => ErrorCode::Internal,
        _ => ErrorCode::Timeout,
    };
    ErrorDetail { code: code as i32, leader_id: 0, leader_addr: String::new() }
}

pub fn detail_code(detail: &ErrorDetail) -> ErrorCode {
    ErrorCode::try_from(detail.code).unwrap_or(ErrorCode::Internal)
}

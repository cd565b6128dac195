//! Errors of the client library, each mapped to a POSIX errno. A conflict is not an error of
//! a transaction's operations (it is `Outcome::Conflict` of a commit); `run` turns too many
//! conflicts into `FsError::Busy`.

use cffs_proto::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("No such file or directory")]
    NotFound,
    #[error("File exists")]
    Exists,
    #[error("Not a directory")]
    NotDir,
    #[error("Is a directory")]
    IsDir,
    #[error("Directory not empty")]
    NotEmpty,
    #[error("Invalid argument: {0}")]
    Invalid(String),
    #[error("File name too long")]
    NameTooLong,
    #[error("Too many levels of symbolic links")]
    Loop,
    #[error("File too large")]
    FileTooLarge,
    #[error("Operation not permitted")]
    NotPermitted,
    #[error("Device or resource busy: {0}")]
    Busy(String),
    /// The request is over a protocol limit (keys or bytes of one transaction).
    #[error("Argument list too long: {0}")]
    TooLarge(String),
    /// The cluster could not be reached or has no leader; nothing was changed.
    #[error("Cluster unavailable: {0}")]
    Unavailable(String),
    /// A commit was sent but its outcome could not be learned: it may or may not have
    /// taken effect (it was retried with the same transaction id, so at most once).
    #[error("Commit outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// File data could not be read intact from any replica of its block: every member of
    /// its group answered, and each copy was missing or failed its crc32. (When some member
    /// could not be asked, the read is `Unavailable` instead.)
    #[error("Input/output error: {0}")]
    DataLost(String),
    /// A commit named a block that is not stored on a majority of its group (it was lost, or
    /// collected while the transaction ran): nothing was applied, and `run` re-runs the
    /// function, which writes its blocks again.
    #[error("Block missing: {0}")]
    BlockMissing(String),
    #[error("Internal error: {0}")]
    Internal(String),
}

impl FsError {
    /// The POSIX errno this error maps to.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => 2,          // ENOENT
            FsError::Exists => 17,           // EEXIST
            FsError::NotDir => 20,           // ENOTDIR
            FsError::IsDir => 21,            // EISDIR
            FsError::NotEmpty => 39,         // ENOTEMPTY
            FsError::Invalid(_) => 22,       // EINVAL
            FsError::NameTooLong => 36,      // ENAMETOOLONG
            FsError::Loop => 40,             // ELOOP
            FsError::FileTooLarge => 27,     // EFBIG
            FsError::NotPermitted => 1,      // EPERM
            FsError::Busy(_) => 16,          // EBUSY
            FsError::TooLarge(_) => 7,       // E2BIG
            FsError::Unavailable(_) => 107,  // ENOTCONN
            FsError::OutcomeUnknown(_) => 5, // EIO
            FsError::DataLost(_) => 5,       // EIO
            FsError::BlockMissing(_) => 5,   // EIO
            FsError::Internal(_) => 5,       // EIO
        }
    }

    /// Errors a function cannot cause by itself: the cluster's or the transport's.
    pub fn is_transient(&self) -> bool {
        matches!(self, FsError::Unavailable(_) | FsError::OutcomeUnknown(_))
    }

    pub(crate) fn from_status(status: &tonic::Status) -> FsError {
        let detail = cffs_proto::error_code::detail(status);
        let message = status.message().to_string();
        match cffs_proto::error_code::detail_code(&detail) {
            ErrorCode::InvalidArgument => FsError::Invalid(message),
            ErrorCode::TooLarge => FsError::TooLarge(message),
            ErrorCode::Timeout | ErrorCode::LeaderChanged => FsError::OutcomeUnknown(message),
            ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::Storage => FsError::Unavailable(message),
            ErrorCode::Internal | ErrorCode::Unspecified => FsError::Internal(message),
            ErrorCode::Checksum => FsError::DataLost(message),
            ErrorCode::BlockMissing => FsError::BlockMissing(message),
        }
    }
}

impl From<cffs_proto::limits::NameError> for FsError {
    fn from(error: cffs_proto::limits::NameError) -> Self {
        match error {
            cffs_proto::limits::NameError::TooLong => FsError::NameTooLong,
            other => FsError::Invalid(other.to_string()),
        }
    }
}

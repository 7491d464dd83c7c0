//! HTTP/1.x: the incremental request parser and the response writer. Both sans-IO.

pub mod parse;
pub mod response;

pub use parse::{HttpError, Limits, Parsed, Request, RequestParser};
pub use response::Response;
